package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// complete runs "devicesim __complete args…" in process and returns the
// candidates (without their descriptions) and the directive line.
func complete(t *testing.T, args ...string) ([]string, string) {
	t.Helper()
	var out bytes.Buffer
	err := run(context.Background(), append([]string{"__complete"}, args...), func(string) string { return "" }, &out)
	if err != nil {
		t.Fatalf("__complete %q: %v", args, err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	var got []string
	for _, l := range lines[:len(lines)-1] {
		got = append(got, strings.SplitN(l, "\t", 2)[0])
	}
	return got, lines[len(lines)-1]
}

// completionCases are what a shell completes, as typed (a trailing space:
// a new word), and the candidates, in cobra's order.
var completionCases = []struct {
	line string
	want []string
}{
	{"devicesim lo", []string{"load"}},
	{"devicesim completion ", []string{"bash", "fish", "powershell", "zsh"}},
	{"devicesim load --pr", []string{"--prefix", "--progress"}},
	{"devicesim --log-level ", logLevels},
	{"devicesim token --role ", []string{"client", "device", "operator"}},
	{"devicesim token --role o", []string{"operator"}},
	{"devicesim list --status s", []string{"scheduled", "sent", "succeeded"}},
	{"devicesim send --method ", builtinMethods},
	{"devicesim load --method ec", []string{"echo"}},
	{"devicesim send --device ", nil}, // free text: no file names either
	{"devicesim get ", nil},
	{"devicesim group ", []string{"delete", "get", "put"}},
	{"devicesim group-command ", []string{"cancel", "get", "list", "wait"}},
	{"devicesim group-command wait --t", []string{"--timeout", "--token"}},
	{"devicesim retry ", nil},
	{"devicesim po", []string{"poll"}},
	{"devicesim answer --re", []string{"--result"}},
}

// TestCompletion: the candidates devicesim gives its completion scripts:
// subcommands, flags, the values of enumerated flags, and nothing (not
// file names) for free text.
func TestCompletion(t *testing.T) {
	t.Parallel()
	for _, tc := range completionCases {
		words := strings.Split(tc.line, " ")[1:]
		got, directive := complete(t, words...)
		if !slices.Equal(got, tc.want) {
			t.Errorf("complete %q = %q, want %q", tc.line, got, tc.want)
		}
		if directive != ":4" { // ShellCompDirectiveNoFileComp
			t.Errorf("complete %q: directive %s, want :4 (no file completion)", tc.line, directive)
		}
	}
	// group put --file: the shell's file names.
	if got, directive := complete(t, "group", "put", "g1", "--file", ""); len(got) != 0 || directive != ":0" {
		t.Errorf("complete group put --file: %q, directive %s; want no candidates and :0 (file names)", got, directive)
	}
	// Every status but void, which a client never sees.
	got, _ := complete(t, "list", "--status", "")
	if len(got) != 13 || slices.Contains(got, "void") {
		t.Errorf("complete list --status: %q, want the 13 statuses a client sees", got)
	}
}

// bashCompletionLib is the bash-completion package's library, which
// cobra's bash script needs (_get_comp_words_by_ref).
const bashCompletionLib = "/usr/share/bash-completion/bash_completion"

// TestCompletionScripts: "devicesim completion bash", loaded into bash
// with the bash-completion package, completes a subcommand, a flag, an
// enumerated value and free text (completionCases) as devicesim does (running devicesim: here the test binary); the zsh
// script is a zsh completion function (and parses, when zsh is
// installed).
func TestCompletionScripts(t *testing.T) {
	t.Parallel()
	var script bytes.Buffer
	if err := run(context.Background(), []string{"completion", "zsh"}, func(string) string { return "" }, &script); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(script.String(), "#compdef devicesim") {
		t.Errorf("the zsh script starts %q, want #compdef devicesim", strings.SplitN(script.String(), "\n", 2)[0])
	}
	dir := t.TempDir()
	zshScript := filepath.Join(dir, "_devicesim")
	if err := os.WriteFile(zshScript, script.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if zsh, err := exec.LookPath("zsh"); err == nil {
		if out, err := exec.Command(zsh, "-n", zshScript).CombinedOutput(); err != nil {
			t.Errorf("zsh -n on the zsh script: %v\n%s", err, out)
		}
	} else {
		t.Log("zsh is not installed: the zsh script is not parsed")
	}

	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("bash is not installed")
	}
	if _, err := os.Stat(bashCompletionLib); err != nil {
		t.Fatalf("the bash-completion package is missing (%v): as root, apt-get install -y bash-completion (or make services, which does)", err)
	}
	script.Reset()
	if err := run(context.Background(), []string{"completion", "bash"}, func(string) string { return "" }, &script); err != nil {
		t.Fatal(err)
	}
	bashScript := filepath.Join(dir, "devicesim.bash")
	if err := os.WriteFile(bashScript, script.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	// "devicesim" on PATH is the test binary, which runs main (TestMain).
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(self, filepath.Join(dir, "devicesim")); err != nil {
		t.Fatal(err)
	}
	// As bash does on Tab: the words of the line up to the cursor, the
	// last one being completed, then the script's completion function.
	const driver = `source "$BASH_COMPLETION_LIB" && source "$SCRIPT" || exit 1
COMP_LINE=$LINE; COMP_POINT=${#COMP_LINE}
read -ra COMP_WORDS <<< "$COMP_LINE"
[[ $COMP_LINE == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
COMPREPLY=()
__start_devicesim devicesim "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\n' "${COMPREPLY[@]}"`
	// One case of each kind: every bash run starts devicesim, which
	// takes a second under -race.
	for _, i := range []int{0, 2, 4, 9} {
		tc := completionCases[i]
		cmd := exec.Command(bash, "--norc", "--noprofile", "-c", driver)
		cmd.Env = append(os.Environ(), testMainEnv+"=1", "PATH="+dir+":"+os.Getenv("PATH"),
			"BASH_COMPLETION_LIB="+bashCompletionLib, "SCRIPT="+bashScript, "LINE="+tc.line)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("bash completing %q: %v\n%s", tc.line, err, stderr.String())
		}
		var got []string
		for _, w := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			// With descriptions, bash shows "candidate  (description)"
			// when there are several; the word is what is inserted.
			if w = strings.TrimSpace(strings.SplitN(w, "  (", 2)[0]); w != "" {
				got = append(got, w)
			}
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("bash completes %q to %q, want %q", tc.line, got, tc.want)
		}
	}
}
