// Command devicesim simulates fleets of devices and clients against the
// gateway, sends single commands, generates load and reports latency and
// loss, watches queue depth, and mints tokens. It talks to the gateway
// only over HTTP and MQTT: every identity finds its push server through
// GET /v1/connect/{identity} and asks again after a refusal or a lost
// connection.
//
//	devicesim token --role client --sub app-1 --devices 'dev-*'
//	devicesim fleet --devices 100 --prefix dev-
//	devicesim send --device dev-1 --method echo --params '{"x":1}'
//	devicesim load --clients 10 --devices 100 --prefix dev- --rate 500 --duration 30s --json
//	devicesim stats --watch
//	devicesim get send-abc --client app-1 --json
//	devicesim wait send-abc --client app-1 --timeout 2m
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/spf13/cobra"

	"github.com/iotgw/gateway/internal/buildinfo"
	"github.com/iotgw/gateway/internal/telemetry"
)

func main() {
	ctx, cancel := telemetry.SignalContext(context.Background())
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout)
	cancel()
	if err != nil {
		var ec exitCode
		if !errors.As(err, &ec) {
			fmt.Fprintln(os.Stderr, "devicesim:", err)
		}
		os.Exit(exitStatus(err))
	}
}

// exitCode is returned by commands whose exit status carries meaning
// and whose message was already printed (send). The API commands return
// an apiFailure instead, whose message main prints.
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// globals are the flags every command takes.
type globals struct {
	API      string
	Secret   string
	LogLevel string
	// envSecret is GW_AUTH_SECRET, used when --secret is not given.
	envSecret string
	stdout    io.Writer
	stderr    io.Writer
	log       *slog.Logger
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	g := &globals{stdout: stdout, stderr: os.Stderr}
	root := &cobra.Command{
		Use:   "devicesim",
		Short: "Simulate devices and clients of the IoT command gateway, send commands, measure",
		Long: `Simulate devices and clients of the IoT command gateway, send commands, measure.

The whole HTTP API from the command line: get, list, cancel, wait, dead,
replay, connect, device, retry, group (put, get, delete), group-command
(get, wait, cancel, list), and a device's HTTP channel: poll, answer (and
stats). Each takes --json to print the API's JSON, and --token, or mints
one with --secret (or GW_AUTH_SECRET) for --client (--operator for dead,
replay, group and group-command list; --device for poll and answer).
Given a token, the client is its sub.

Exit status of get, list, cancel, wait, dead, replay, connect, device,
retry, group, group-command, poll and answer:
  0  ok
  1  usage, bad input, or interrupted (Ctrl-C)
  2  not found (404)
  3  conflict (409, e.g. cancel too late; answer: a response changed nothing)
  4  the API is unreachable, did not answer in time, answered 5xx, or 429
  5  authentication or authorization failed (401, 403)
  6  wait: the command ended with a final status other than succeeded
     (group-command wait: every child final, not every one succeeded)
  7  wait: --timeout passed before the command was final
send and load document their own in their help.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			g.log = telemetry.NewLogger(g.stderr, "text", g.LogLevel)
			return nil
		},
	}
	root.Version = buildinfo.Read().String("devicesim")
	root.SetVersionTemplate("{{.Version}}\n")
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(g.stderr)
	api := getenv("GW_API_URL")
	if api == "" {
		api = "http://127.0.0.1:8080"
	}
	root.PersistentFlags().StringVar(&g.API, "api", api, "gateway HTTP API (env GW_API_URL)")
	// The secret's flag default stays empty, so that --help never prints
	// GW_AUTH_SECRET; the variable is read when the flag is not given.
	root.PersistentFlags().StringVar(&g.Secret, "secret", "", "HS256 token secret (env GW_AUTH_SECRET)")
	g.envSecret = getenv("GW_AUTH_SECRET")
	root.PersistentFlags().StringVar(&g.LogLevel, "log-level", "warn", "log level: debug, info, warn, error")
	root.AddCommand(tokenCmd(g), fleetCmd(ctx, g), sendCmd(ctx, g), loadCmd(ctx, g), statsCmd(ctx, g),
		getCmd(ctx, g), listCmd(ctx, g), cancelCmd(ctx, g), waitCmd(ctx, g), deadCmd(ctx, g), replayCmd(ctx, g), connectCmd(ctx, g),
		groupCmd(ctx, g), groupCommandCmd(ctx, g), retryCmd(ctx, g), pollCmd(ctx, g), answerCmd(ctx, g), deviceCmd(ctx, g))
	setCompletions(root)
	// Spans of simulated devices and clients go to stderr with the console
	// exporter: stdout is the commands' output.
	stopTracing, err := telemetry.StartTracing(ctx, "devicesim", getenv, g.stderr, nil)
	if err != nil {
		return err
	}
	defer telemetry.Flush(stopTracing, g.log)
	return root.ExecuteContext(ctx)
}

func (g *globals) secret() ([]byte, error) {
	if g.Secret == "" {
		g.Secret = g.envSecret
	}
	if g.Secret == "" {
		return nil, errors.New("no secret: pass --secret or set GW_AUTH_SECRET")
	}
	return []byte(g.Secret), nil
}
