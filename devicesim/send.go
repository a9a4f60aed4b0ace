package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/internal/config"
	"github.com/iotgw/gateway/protocol"
)

// Exit statuses of devicesim send.
const (
	exitDeviceError  exitCode = 2
	exitTimeout      exitCode = 3
	exitGatewayError exitCode = 4
)

func sendCmd(ctx context.Context, g *globals) *cobra.Command {
	var device, method, params, id, client, token, lane, laneMode, notBefore string
	var timeout, expiresIn, wait time.Duration
	var oneWay bool
	var devices []string
	var group, abortAfter string
	var rate float64
	var retry RetryOptions
	cmd := &cobra.Command{
		Use:   "send",
		Short: "Send one command to one device, or a group command to many, and print its result",
		Long: `Subscribe to the client's results first, POST the command, wait for the result
and print it. Exit status: 0 success, 2 the device answered with an error,
3 timeout (no answer in time), 4 the gateway refused or failed the command,
1 anything else. With --oneway the device's PUBACK is the success (exit 0 with
the result {"one_way":true,"delivered":true}); --lane puts the command into an
ordered lane of the device; --not-before schedules it (status scheduled until
then, and expires_in counts from then). --retries N (or --retry N) gives the command a
retry policy: at most N + 1 attempts, each retried when it ends with an
outcome --retry-on names (timeout, expired, device_error, rejected; default
timeout), after --retry-backoff; the result says how many attempts it took.

With --devices a,b,c or --group NAME it sends a group command (POST
/v1/commands; --rate and --abort-after shape the rollout), prints the
group's progress until every child is final and counts the children's
results over MQTT; the exit status is 0 only when every child succeeded.`,
		Example: `  devicesim send --device dev-1 --method echo --params '{"hello":"world"}'
  devicesim send --device dev-1 --method reboot --retries 2 --retry-on device_error,timeout --retry-backoff 1s,2
  devicesim send --device dev-1 --method firmware.check --not-before 2h
  devicesim send --devices dev-1,dev-2,dev-3 --method reboot --rate 50 --abort-after 5%`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			targets := 0
			for _, set := range []bool{device != "", len(devices) > 0, group != ""} {
				if set {
					targets++
				}
			}
			if targets != 1 {
				return fmt.Errorf("give exactly one of --device, --devices and --group")
			}
			if device != "" && !protocol.ValidIdentity(device) {
				return fmt.Errorf("--device %q is not a valid device ID", device)
			}
			if device != "" && (rate != 0 || abortAfter != "") {
				return fmt.Errorf("--rate and --abort-after are for group commands (--devices, --group)")
			}
			if token == "" {
				secret, err := g.secret()
				if err != nil {
					return err
				}
				globs := []string{device}
				switch {
				case len(devices) > 0:
					globs = devices
				case group != "":
					globs = []string{"*"} // the group's devices are not known here
				}
				if token, err = auth.Mint(secret, client, auth.RoleClient, globs, time.Hour); err != nil {
					return err
				}
			}
			if id == "" {
				id = "send-" + strconv.FormatInt(time.Now().UnixNano(), 36)
			}
			req := map[string]any{"jsonrpc": "2.0", "method": method, "id": id}
			if params != "" {
				if !json.Valid([]byte(params)) {
					return fmt.Errorf("--params is not valid JSON")
				}
				req["params"] = json.RawMessage(params)
			}
			body, _ := json.Marshal(req)
			if retry.Retries == 0 && (retry.On != "" || retry.Backoff != "") {
				return fmt.Errorf("--retry-on and --retry-backoff need --retries (a retry policy)")
			}
			if retry.On != "" {
				if _, err := protocol.ParseRetryOn(retry.On); err != nil {
					return fmt.Errorf("--retry-on: %w", err)
				}
			}
			// The gateway checks not_before; here it only lengthens the
			// default wait by the time the command stays scheduled.
			var delay time.Duration
			if notBefore != "" {
				if device == "" {
					return fmt.Errorf("--not-before is for one command (--device): group commands are not scheduled")
				}
				if t, err := time.Parse(time.RFC3339Nano, notBefore); err == nil {
					delay = time.Until(t)
				} else if delay, err = config.ParseDuration(notBefore); err != nil || delay < 0 {
					return fmt.Errorf("--not-before %q is neither an RFC 3339 time nor a duration (10m, 2h)", notBefore)
				}
			}
			if wait == 0 {
				// Each attempt may take its expiry window and its timeout.
				wait = max(delay, 0) + time.Duration(retry.Retries+1)*timeout + 30*time.Second
			}
			if device == "" {
				if oneWay || lane != "" {
					return fmt.Errorf("--oneway and --lane are for one command (--device)")
				}
				if rate > 0 && len(devices) > 0 {
					wait += time.Duration(float64(len(devices)) / rate * float64(time.Second))
				}
				o := GroupOptions{Timeout: timeout, ExpiresIn: expiresIn, Rate: rate, AbortAfter: abortAfter, Retry: retry}
				return sendGroup(ctx, g, client, token, id, body, devices, group, o, wait)
			}
			if oneWay && cmd.Flags().Changed("timeout") {
				return fmt.Errorf("--oneway takes no --timeout: no answer is awaited")
			}
			if lane != "" {
				if _, err := protocol.ParseLane(lane); err != nil {
					return fmt.Errorf("--lane: %w", err)
				}
			}
			if laneMode != "" && (lane == "" || laneMode != "final" && laneMode != protocol.LaneModePUBACK) {
				return fmt.Errorf("--lane-mode is final or puback, with --lane")
			}
			return sendOne(ctx, g, client, token, device, id, body,
				SendOptions{Timeout: timeout, ExpiresIn: expiresIn, OneWay: oneWay, Lane: lane, LaneMode: laneMode, Retry: retry, NotBefore: notBefore}, wait)
		},
	}
	f := cmd.Flags()
	f.StringVar(&device, "device", "", "device ID (one command)")
	f.StringSliceVar(&devices, "devices", nil, "device IDs, comma-separated (a group command)")
	f.StringVar(&group, "group", "", "a named device group (a group command; PUT /v1/groups/{name})")
	f.Float64Var(&rate, "rate", 0, "group commands: children released per second (0: all at once)")
	f.StringVar(&abortAfter, "abort-after", "", "group commands: stop after this many failed children, or this percentage (5%)")
	f.StringVar(&method, "method", "ping", "JSON-RPC method")
	f.StringVar(&params, "params", "", "JSON-RPC params (an object or an array)")
	f.StringVar(&id, "id", "", "message ID (default: generated)")
	f.StringVar(&client, "client", "cli-1", "client identity (used when minting a token)")
	f.StringVar(&token, "token", "", "client token (default: minted with --secret)")
	f.DurationVar(&timeout, "timeout", 30*time.Second, "the device must answer within this after delivery")
	f.DurationVar(&expiresIn, "expires-in", time.Hour, "the command must be delivered within this")
	f.DurationVar(&wait, "wait", 0, "how long to wait for the result (default: timeout + 30s)")
	f.BoolVar(&oneWay, "oneway", false, "a one-way command: the device's PUBACK is its success, result {\"one_way\":true,\"delivered\":true}")
	f.StringVar(&lane, "lane", "", "send the command in this ordered lane of the device")
	f.StringVar(&laneMode, "lane-mode", "", "with --lane: final (default) or puback (the lane moves on at this command's delivery)")
	f.IntVar(&retry.Retries, "retries", 0, "a retry policy: at most this many retries (--retry for short)")
	f.StringVar(&retry.On, "retry-on", "", "with --retries: the outcomes retried, comma-separated: timeout, expired, device_error, rejected (default timeout)")
	f.StringVar(&notBefore, "not-before", "", "schedule the command (--device): an RFC 3339 time or a duration from now (10m, 2h), at most 30 days ahead; it stays scheduled, cancellable, until then")
	f.StringVar(&retry.Backoff, "retry-backoff", "", "with --retries: the wait before each retry, initial[,multiplier[,max]] (1s,2,30s)")
	f.SetNormalizeFunc(func(_ *pflag.FlagSet, name string) pflag.NormalizedName {
		if name == "retry" {
			name = "retries"
		}
		return pflag.NormalizedName(name)
	})
	return cmd
}

func sendOne(ctx context.Context, g *globals, client, token, device, id string, body []byte, o SendOptions, wait time.Duration) error {
	api := NewAPI(g.API)
	want, _ := protocol.ParseIDKey(id)
	results := make(chan Result, 4)
	var once sync.Once
	sess := NewClientSession(client, token, api, func(r Result) {
		if got, err := protocol.ParseID(r.Resp.ID); err == nil && got.Key() == want.Key() && r.Device == device {
			once.Do(func() { results <- r })
		}
	})
	stop, err := connectClient(ctx, sess, client)
	if err != nil {
		return err
	}
	defer stop()
	start := time.Now()
	acc, status, err := api.Send(ctx, token, device, body, o)
	if err != nil {
		fmt.Fprintln(g.stdout, err)
		return exitGatewayError
	}
	fmt.Fprintf(g.stderr, "%d %s: %s (trace_id %s)\n", status, acc.Status, acc.StatusURL, acc.TraceID)
	select {
	case r := <-results:
		out, _ := json.MarshalIndent(r.Resp, "", "  ")
		fmt.Fprintf(g.stdout, "%s\n", out)
		fmt.Fprintf(g.stderr, "round trip %s\n", time.Since(start).Round(time.Microsecond))
		if r.Attempts > 0 {
			fmt.Fprintf(g.stderr, "attempts %d\n", r.Attempts)
		}
		switch {
		case r.Resp.Error == nil:
			return nil
		case r.Resp.Error.Source() == protocol.SourceGateway && r.Resp.Error.Code == protocol.CodeTimeout:
			return exitTimeout
		case r.Resp.Error.Source() == protocol.SourceGateway:
			return exitGatewayError
		default:
			return exitDeviceError
		}
	case <-time.After(wait):
		fmt.Fprintf(g.stdout, "no result within %s (status: %s)\n", wait, acc.StatusURL)
		return exitTimeout
	case <-ctx.Done():
		return ctx.Err()
	}
}
