package migrate

import (
	"crypto/tls"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"tandem/api"
	"tandem/client"
)

// A source that lost the answer to its restore asks the destination; what it concludes decides
// whether it resumes the instance (never while the destination may run it).
func TestSettleAsksTheDestination(t *testing.T) {
	for _, tc := range []struct {
		name    string
		handler http.HandlerFunc
		want    string
		aborts  bool
	}{
		{"running", status(http.StatusOK, api.MigrationRunning), api.MigrationRunning, false},
		{"committed", status(http.StatusOK, api.MigrationCommitted), api.MigrationCommitted, false},
		{"unknown", status(http.StatusNotFound, ""), api.MigrationAborted, false},
		{"restore never arrived", status(http.StatusOK, api.MigrationPreparing), api.MigrationAborted, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			aborted := false
			srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method == http.MethodDelete {
					aborted = true
					w.Write([]byte("{}"))
					return
				}
				tc.handler(w, r)
			}))
			defer srv.Close()
			o := testOutgoing(t, srv.URL)
			if got := o.settle(time.Second); got != tc.want {
				t.Fatalf("settle = %s, want %s", got, tc.want)
			}
			if aborted != tc.aborts {
				t.Fatalf("aborted the destination: %v, want %v", aborted, tc.aborts)
			}
		})
	}
}

// An unreachable destination is taken as having dropped the instance only after the wait, which
// the caller sets past the destination's own commit deadline.
func TestSettleWaitsOutAnUnreachableDestination(t *testing.T) {
	srv := httptest.NewTLSServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	o := testOutgoing(t, url)
	start := time.Now()
	if got := o.settle(2 * time.Second); got != api.MigrationAborted {
		t.Fatalf("settle = %s", got)
	}
	if waited := time.Since(start); waited < 2*time.Second {
		t.Fatalf("gave up after %v, before the wait", waited)
	}
}

func status(code int, st string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		if code == http.StatusOK {
			json.NewEncoder(w).Encode(api.MigrationInfo{Status: st})
		} else {
			json.NewEncoder(w).Encode(api.Error{Error: "no such migration", Code: code})
		}
	}
}

func testOutgoing(t *testing.T, url string) *outgoing {
	t.Helper()
	cl, err := client.NewHTTPS(url, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	return &outgoing{cl: cl, id: "11111111-2222-3333-4444-555555555555", remote: "b"}
}
