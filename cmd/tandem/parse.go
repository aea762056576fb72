package main

import (
	"fmt"
	"strings"

	"tandem/api"
)

// parseKeyValues turns key=value words into a map. The value may be empty or hold further "="; the
// key may not be empty.
func parseKeyValues(words []string) (map[string]string, error) {
	out := make(map[string]string, len(words))
	for _, w := range words {
		k, v, ok := strings.Cut(w, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			return nil, fmt.Errorf("invalid %q: want key=value", w)
		}
		out[k] = v
	}
	return out, nil
}

// parseDevice parses a --device value: "NAME,key=value,..." such as "eth0,type=nic,network=tandem0".
func parseDevice(spec string) (string, map[string]string, error) {
	parts := strings.Split(spec, ",")
	name := strings.TrimSpace(parts[0])
	if name == "" || strings.Contains(name, "=") {
		return "", nil, fmt.Errorf("invalid device %q: want NAME,type=TYPE,key=value,…", spec)
	}
	settings, err := parseKeyValues(parts[1:])
	if err != nil {
		return "", nil, fmt.Errorf("invalid device %q: %w", spec, err)
	}
	if settings["type"] == "" {
		return "", nil, fmt.Errorf("invalid device %q: missing type= (nic, disk, ...)", spec)
	}
	return name, settings, nil
}

// parseDevices parses every --device value; a name given twice is a mistake, not an override.
func parseDevices(specs []string) (api.Devices, error) {
	if len(specs) == 0 {
		return nil, nil
	}
	out := api.Devices{}
	for _, s := range specs {
		name, settings, err := parseDevice(s)
		if err != nil {
			return nil, err
		}
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("device %q given twice", name)
		}
		out[name] = settings
	}
	return out, nil
}
