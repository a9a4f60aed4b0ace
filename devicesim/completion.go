package main

import (
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/protocol"
)

// Shell completion: `devicesim completion bash|zsh` (cobra's completion
// command, which also writes fish and powershell scripts) prints a script
// that asks the binary itself (`devicesim __complete …`) for candidates:
// subcommands and flags come from the command tree, the values of
// enumerated flags from flagValues, and every other flag value and
// argument completes to nothing rather than to file names (the one file
// devicesim reads is --file of group put, which completes to file names).

// logLevels are the values of --log-level.
var logLevels = []string{"debug", "info", "warn", "error"}

// builtinMethods are the methods of the simulated devices (Device.call).
var builtinMethods = []string{"ping", "echo", "get_state", "set_state", "sleep", "reboot"}

// flagValues returns the values of the enumerated flags, by flag name
// (each name means one thing in every command that has it).
func flagValues() map[string][]string {
	var statuses []string
	for _, s := range protocol.Statuses {
		if s != protocol.StatusVoid { // never shown to a client
			statuses = append(statuses, string(s))
		}
	}
	return map[string][]string{
		"log-level": logLevels,
		"role":      {string(auth.RoleClient), string(auth.RoleDevice), string(auth.RoleOperator)},
		"status":    statuses,
		"method":    builtinMethods, // send and load: any method; these the simulated devices know
	}
}

// setCompletions registers, on every command under root, the completion
// of each flag's value (flagValues, or nothing) and of the arguments
// (nothing).
func setCompletions(root *cobra.Command) {
	values := flagValues()
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		c.LocalFlags().VisitAll(func(f *pflag.Flag) {
			if f.Value.Type() == "bool" {
				return
			}
			if f.Name == "file" {
				return // the shell's file names
			}
			complete := cobra.NoFileCompletions
			if vs, ok := values[f.Name]; ok {
				complete = fixedCompletions(vs)
			}
			// Only this command's own flags are visited, each once.
			_ = c.RegisterFlagCompletionFunc(f.Name, complete)
		})
		if c.ValidArgsFunction == nil && len(c.ValidArgs) == 0 {
			c.ValidArgsFunction = cobra.NoFileCompletions
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

// fixedCompletions completes to the values that start with what is typed.
func fixedCompletions(values []string) cobra.CompletionFunc {
	return func(_ *cobra.Command, _ []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		out := slices.DeleteFunc(slices.Clone(values), func(v string) bool { return !strings.HasPrefix(v, toComplete) })
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}
