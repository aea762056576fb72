package driver

import (
	"fmt"
	"sort"
	"sync"
)

// Registry maps instance types and driver names to drivers.
type Registry struct {
	mu     sync.RWMutex
	byName map[string]Driver
	byType map[string]string // instance type -> driver name
}

func NewRegistry() *Registry {
	return &Registry{byName: map[string]Driver{}, byType: map[string]string{}}
}

// Register adds a driver under name, serving the given instance types.
func (r *Registry) Register(name string, d Driver, types ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.byName[name] = d
	for _, t := range types {
		r.byType[t] = name
	}
}

// ForType returns the driver name and driver that runs instances of the given type.
func (r *Registry) ForType(instanceType string) (string, Driver, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	name, ok := r.byType[instanceType]
	if !ok {
		return "", nil, fmt.Errorf("no driver for instance type %q", instanceType)
	}
	return name, r.byName[name], nil
}

// ByName returns the driver registered under name.
func (r *Registry) ByName(name string) (Driver, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	d, ok := r.byName[name]
	if !ok {
		return nil, fmt.Errorf("driver %q is not registered", name)
	}
	return d, nil
}

// Types returns, for each registered driver name, the instance types it serves.
func (r *Registry) Types() map[string][]string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := map[string][]string{}
	for t, n := range r.byType {
		out[n] = append(out[n], t)
	}
	for _, ts := range out {
		sort.Strings(ts)
	}
	return out
}

// Names returns the registered driver names, sorted.
func (r *Registry) Names() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var names []string
	for n := range r.byName {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
