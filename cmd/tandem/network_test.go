package main

import (
	"encoding/json"
	"testing"

	"tandem/api"
)

func TestNetworkUplink(t *testing.T) {
	d, dir := startFake(t)
	r := cli(t, dir, false, "network", "create", "lab", "--subnet", "10.77.0.0/24", "--uplink", "eth1", "--nat=false")
	if r.code != 0 || r.stdout != "Created network lab (10.77.0.0/24, uplink eth1)\n" {
		t.Fatalf("create: code %d out %q err %q", r.code, r.stdout, r.stderr)
	}
	var req api.NetworksPost
	posts := d.requests("POST", "/1.0/networks")
	if len(posts) != 1 || json.Unmarshal([]byte(posts[0].Body), &req) != nil ||
		req.Uplink != "eth1" || req.Subnet != "10.77.0.0/24" || req.NAT == nil || *req.NAT {
		t.Fatalf("request: %+v", posts)
	}

	r = cli(t, dir, false, "network", "list")
	want := "" +
		"NAME     SUBNET        GATEWAY    NAT    UPLINK  USED BY\n" +
		"lab      10.77.0.0/24  10.77.0.1  false  eth1    1\n" +
		"tandem0  10.3.4.0/24   10.3.4.1   true   -       0\n"
	if r.code != 0 || r.stdout != want {
		t.Fatalf("list: code %d\n%s\nwant\n%s", r.code, r.stdout, want)
	}
}

func TestNetworkHostAccess(t *testing.T) {
	d, dir := startFake(t)
	if r := cli(t, dir, false, "network", "create", "open", "--host-access"); r.code != 0 {
		t.Fatalf("create: code %d err %q", r.code, r.stderr)
	}
	var req api.NetworksPost
	posts := d.requests("POST", "/1.0/networks")
	if len(posts) != 1 || json.Unmarshal([]byte(posts[0].Body), &req) != nil || !req.HostAccess {
		t.Fatalf("request: %+v", posts)
	}
}
