// Package deployments holds no code. Its folders say how to run the
// gateway: local/ (scripts for a machine without Docker), compose/ (Docker
// Compose with RabbitMQ, Redis and every service), k8s/ (Kustomize
// manifests, KEDA autoscaling of the workers), helm/iotgw/ (the same as a
// Helm chart) and monitoring/ (Prometheus
// scrape config and alert rules, a Grafana dashboard). The Dockerfile next
// to this file builds the one image every service runs from.
//
// None of that can run in `go test` (no Docker engine, no cluster), so the
// package's test reads the files instead and checks them against the
// sources: every GW_* variable is one the binary it is given to really
// reads, every port and probe path is one it serves, every metric name in
// a dashboard or an alert is one a service registers, every service gets
// the same GW_QUEUES and GW_PARTITIONS, and the KEDA trigger sums exactly
// the command queues of protocol.NewTopology. The chart is rendered with
// `helm template` (helm must be in PATH or <repo>/bin: `make services`
// installs it) and checked the same way. When `docker compose`, `kubectl`
// or `promtool` is installed the test also runs it on the files;
// otherwise it logs that it skipped that check.
package deployments
