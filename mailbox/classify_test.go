package mailbox

import (
	"errors"
	"testing"

	"github.com/redis/go-redis/v9"
)

// replyError is an error reply of a server, as go-redis returns it.
type replyError string

func (e replyError) Error() string { return string(e) }
func (replyError) RedisError()     {}

// The replies of a failover or a cluster change are transient
// (ErrUnavailable), never read as "missing"; other replies are passed on
// as they are (DESIGN §7a, "Keys a script can name").
func TestClassify(t *testing.T) {
	t.Parallel()
	s := New(redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{"127.0.0.1:1"}}), "classify", Options{})
	defer s.rdb.Close()
	tests := []struct {
		reply     string
		transient bool
	}{
		{"TRYAGAIN Multiple keys request during rehashing of slot", true},
		{"ASK 1234 127.0.0.1:7102", true},
		{"MOVED 1234 127.0.0.1:7102", true},
		{"CLUSTERDOWN The cluster is down", true},
		{"CLUSTERDOWN Hash slot not served", true},
		{"LOADING Redis is loading the dataset in memory", true},
		{"READONLY You can't write against a read only replica.", true},
		{"MASTERDOWN Link with MASTER is down", true},
		{"NOREPLICAS Not enough good replicas to write.", true},
		{"ERR max number of clients reached", true},
		{"WRONGTYPE Operation against a key holding the wrong kind of value", false},
		{"ERR Function not found", false},
	}
	for _, tt := range tests {
		err := s.classify(replyError(tt.reply))
		if got := errors.Is(err, ErrUnavailable); got != tt.transient {
			t.Errorf("classify(%q) = %v, transient %v, want %v", tt.reply, err, got, tt.transient)
		}
		if errors.Is(err, redis.Nil) {
			t.Errorf("classify(%q) = %v, reads as missing (redis.Nil)", tt.reply, err)
		}
	}
	if err := s.classify(errors.New("dial tcp 127.0.0.1:7101: connect: connection refused")); !errors.Is(err, ErrUnavailable) {
		t.Errorf("classify(a network error) = %v, want ErrUnavailable", err)
	}
}
