package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/protocol"
)

// Exit statuses of devicesim send.
const (
	exitDeviceError  exitCode = 2
	exitTimeout      exitCode = 3
	exitGatewayError exitCode = 4
)

func sendCmd(ctx context.Context, g *globals) *cobra.Command {
	var device, method, params, id, client, token string
	var timeout, expiresIn, wait time.Duration
	cmd := &cobra.Command{
		Use:   "send",
		Short: "Send one command to one device and print its result",
		Long: `Subscribe to the client's results first, POST the command, wait for the result
and print it. Exit status: 0 success, 2 the device answered with an error,
3 timeout (no answer in time), 4 the gateway refused or failed the command,
1 anything else.`,
		Example: `  devicesim send --device dev-1 --method echo --params '{"hello":"world"}'`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !protocol.ValidIdentity(device) {
				return fmt.Errorf("--device %q is not a valid device ID", device)
			}
			if token == "" {
				secret, err := g.secret()
				if err != nil {
					return err
				}
				if token, err = auth.Mint(secret, client, auth.RoleClient, []string{device}, time.Hour); err != nil {
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
			if wait == 0 {
				wait = timeout + 30*time.Second
			}
			return sendOne(ctx, g, client, token, device, id, body, timeout, expiresIn, wait)
		},
	}
	f := cmd.Flags()
	f.StringVar(&device, "device", "", "device ID (required)")
	f.StringVar(&method, "method", "ping", "JSON-RPC method")
	f.StringVar(&params, "params", "", "JSON-RPC params (an object or an array)")
	f.StringVar(&id, "id", "", "message ID (default: generated)")
	f.StringVar(&client, "client", "cli-1", "client identity (used when minting a token)")
	f.StringVar(&token, "token", "", "client token (default: minted with --secret)")
	f.DurationVar(&timeout, "timeout", 30*time.Second, "the device must answer within this after delivery")
	f.DurationVar(&expiresIn, "expires-in", time.Hour, "the command must be delivered within this")
	f.DurationVar(&wait, "wait", 0, "how long to wait for the result (default: timeout + 30s)")
	_ = cmd.MarkFlagRequired("device")
	return cmd
}

func sendOne(ctx context.Context, g *globals, client, token, device, id string, body []byte, timeout, expiresIn, wait time.Duration) error {
	api := NewAPI(g.API)
	want, _ := protocol.ParseIDKey(id)
	results := make(chan Result, 4)
	var once sync.Once
	sess := NewClientSession(client, token, api, func(r Result) {
		if got, err := protocol.ParseID(r.Resp.ID); err == nil && got.Key() == want.Key() && r.Device == device {
			once.Do(func() { results <- r })
		}
	})
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan struct{})
	go func() { defer close(done); sess.Run(ctx, nil) }()
	defer func() { cancel(); <-done }()
	select {
	case <-sess.Ready():
	case <-time.After(15 * time.Second):
		return fmt.Errorf("could not connect client %s to its push server within 15s", client)
	case <-ctx.Done():
		return ctx.Err()
	}
	start := time.Now()
	acc, status, err := api.SendCommand(ctx, token, device, body, timeout, expiresIn)
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
