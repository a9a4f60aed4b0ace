// Package testenv is the integration-test harness shared by every package of
// the gateway. Tests run against a real RabbitMQ and a real Redis on loopback
// (start them with deployments/local/services.sh, or `make services`); there
// are no mocks for the brokers.
//
// # Servers
//
// The servers are given as URLs, read from the same variables the services use:
//
//	GW_AMQP_URL       amqp://guest:guest@127.0.0.1:5672/
//	GW_AMQP_MGMT_URL  http://guest:guest@127.0.0.1:15672
//	GW_REDIS_URL      redis://127.0.0.1:6379/0
//
// An integration test starts with [RequireServices] (or with [Redis] or
// [AMQP], which call it). With `go test -short` it skips the test; otherwise,
// when a server cannot be reached within a few seconds, it fails the test
// with a message that names the server and tells how to start it. Missing
// servers are a failure, not a skip, so that `make test` cannot pass by
// testing nothing.
//
// # Isolation
//
// Tests share the servers and run in parallel, so each test works in its own
// namespace, the value it passes as GW_NAMESPACE (or as the Namespace field
// of a configuration):
//
//	func TestSomething(t *testing.T) {
//		t.Parallel()
//		rdb := testenv.Redis(t)
//		ns := testenv.Namespace(t)
//		cfg := Config{Namespace: ns, RedisURL: testenv.RedisURL(), Logger: testenv.Logger(t)}
//		...
//	}
//
// A namespace looks like gwt-1767139200-9f86d081: lowercase letters, digits
// and dashes only, so it is valid as an AMQP name prefix and as a Redis key
// prefix. When the test ends, [Namespace]'s cleanup deletes every Redis key
// matching "<ns>:*" or "{<ns>:*" (SCAN and UNLINK, never KEYS) and every
// RabbitMQ queue and exchange whose name starts with "<ns>.". Queues and
// exchanges are found through the management API; when it cannot be
// reached, the names of the standard topology (DESIGN §6) are deleted
// instead.
//
// Cleanups run in reverse order of registration: call Namespace before
// starting the components under test, so that they are stopped (by their own
// cleanups) before their queues are deleted.
//
// The first call of Namespace in a test binary also sweeps away what crashed
// or killed test runs left behind: namespaces of the form gwt-<unix
// seconds>-… that are more than an hour old.
//
// # Private servers
//
// Fault tests (`make faults`) kill, freeze and restart the servers the
// gateway depends on, so they never use the shared ones: [StartRedis]
// starts a Redis server of the test's own (free loopback port, its own
// folder, appendfsync always or everysec) and [StartRabbit] a RabbitMQ
// node (its own node name, ports, data folder, HOME and so Erlang cookie;
// rabbitmqctl through [PrivateRabbit.Ctl]). Each runs in a process group
// of its own, so SIGKILL, SIGSTOP and SIGCONT reach the whole server, and
// is killed when the test ends. [PrivateRedis.CrashCut] emulates a host
// crash under everysec (SIGKILL, then the append-only file cut back to
// its size a second before).
//
// # Other helpers
//
// [FreePort] and [FreeAddr] pick a free loopback port; [Logger] gives a
// *slog.Logger that writes through t.Log when GW_TEST_LOG=1 and discards
// everything otherwise.
//
// [Chromium] finds a headless Chromium (installed by `make services`;
// without one it fails the test, naming the command that installs it);
// [RunChromium] runs it on a page to the end (--dump-dom, --screenshot),
// [StartChromium] runs it until the test has what the page reports.
package testenv
