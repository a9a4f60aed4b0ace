package testenv

import (
	"reflect"
	"testing"
)

func TestParseClusterNodes(t *testing.T) {
	text := `07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004,hostname4 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:30003@31003 master - 0 1426238318243 3 connected 10923-16383 [16000->-e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca]
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460 16001
824fe116063bc5fcf9f4ffd895bc17aee7731ac3 127.0.0.1:30006@31006 slave,fail 292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 0 1426238317741 6 disconnected
`
	nodes := parseClusterNodes(text)
	if len(nodes) != 5 {
		t.Fatalf("parseClusterNodes: %d nodes, want 5", len(nodes))
	}
	byAddr := map[string]clusterNode{}
	for _, n := range nodes {
		byAddr[n.addr] = n
	}
	one := byAddr["127.0.0.1:30001"]
	if !one.has("master") || !one.has("myself") || !reflect.DeepEqual(one.slots, [][2]int{{0, 5460}, {16001, 16001}}) {
		t.Errorf("node 30001 = %+v", one)
	}
	if !one.serves(0) || !one.serves(16001) || one.serves(5461) {
		t.Errorf("node 30001 serves the wrong slots: %+v", one.slots)
	}
	three := byAddr["127.0.0.1:30003"]
	if !reflect.DeepEqual(three.slots, [][2]int{{10923, 16383}}) {
		t.Errorf("node 30003 slots = %v, want the range without the migrating slot", three.slots)
	}
	four := byAddr["127.0.0.1:30004"]
	if !four.has("slave") || four.master != one.id || four.link != "connected" || four.failing() {
		t.Errorf("node 30004 (hostname stripped) = %+v", four)
	}
	if six := byAddr["127.0.0.1:30006"]; !six.failing() || six.link != "disconnected" {
		t.Errorf("node 30006 = %+v, want failing", six)
	}
}

func TestInfoFields(t *testing.T) {
	f := infoFields("# Server\r\nredis_version:7.0.15\r\nprocess_id:42\r\nconfig_file:/run/x/redis.conf\r\n\r\n# Replication\r\nslave0:ip=127.0.0.1,port=7202,state=online\r\n")
	want := map[string]string{"redis_version": "7.0.15", "process_id": "42", "config_file": "/run/x/redis.conf", "slave0": "ip=127.0.0.1,port=7202,state=online"}
	if !reflect.DeepEqual(f, want) {
		t.Errorf("infoFields = %v, want %v", f, want)
	}
}
