// Package e2e builds the layerfs binary and drives it the way users do:
// through its command line, against real stores, real tars made by GNU tar
// and real images made by umoci and skopeo.
package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// binEnv names a prebuilt layerfs (with layerfs-overlay beside it) to
// test instead of building them: the rootless pass runs as a user who has
// no Go toolchain or module cache (scripts/test-rootless.sh).
const binEnv = "LAYERFS_TEST_BIN"

func buildBinary() (string, func(), error) {
	if bin := os.Getenv(binEnv); bin != "" {
		if _, err := os.Stat(filepath.Join(filepath.Dir(bin), "layerfs-overlay")); err != nil {
			return "", nil, fmt.Errorf("%s=%s: want layerfs-overlay beside it: %w", binEnv, bin, err)
		}
		return bin, func() {}, nil
	}
	dir, err := os.MkdirTemp("", "layerfs-e2e-bin-")
	if err != nil {
		return "", nil, err
	}
	bin := filepath.Join(dir, "layerfs")
	for _, name := range []string{"layerfs", "layerfs-overlay"} {
		// Static, as make build makes them.
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, name), "github.com/layerfs/layerfs/cmd/"+name)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		cmd.Stderr = os.Stderr
		if err := cmd.Run(); err != nil {
			os.RemoveAll(dir)
			return "", nil, fmt.Errorf("build %s: %w", name, err)
		}
	}
	// The tests and a possible rootless run need to reach it.
	os.Chmod(dir, 0o755)
	return bin, func() { os.RemoveAll(dir) }, nil
}

// binPath is the layerfs built once for the whole package (TestMain).
var binPath string

// helperEnv, set, makes the test binary a helper process (runHelper)
// instead of the tests: for a system call no command-line tool makes.
const helperEnv = "LAYERFS_E2E_HELPER"

func TestMain(m *testing.M) {
	if job := os.Getenv(helperEnv); job != "" {
		os.Exit(runHelper(job, os.Args[1:]))
	}
	bin, cleanup, err := buildBinary()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binPath = bin
	code := m.Run()
	cleanup()
	os.Exit(code)
}

// result is what one layerfs invocation did.
type result struct {
	stdout, stderr string
	err            error
}

// lastLine is the last non-empty line of stdout: where commands print IDs.
func (r result) lastLine() string {
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// store is one store directory under test.
type store struct {
	t    *testing.T
	root string
}

func newStore(t *testing.T) *store {
	t.Helper()
	return &store{t: t, root: filepath.Join(t.TempDir(), "store")}
}

// run runs layerfs with the store and args; stdin may be nil.
func (s *store) run(stdin []byte, args ...string) result {
	s.t.Helper()
	cmd := exec.Command(binPath, append([]string{"--store", s.root}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	cmd.Env = append(os.Environ(), "LAYERFS_STORE=")
	err := cmd.Run()
	return result{out.String(), errb.String(), err}
}

// ok runs layerfs and fails the test unless it succeeds.
func (s *store) ok(stdin []byte, args ...string) result {
	s.t.Helper()
	r := s.run(stdin, args...)
	if r.err != nil {
		s.t.Fatalf("layerfs %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.err, r.stdout, r.stderr)
	}
	return r
}

// fails runs layerfs and fails the test unless it exits non-zero with
// stderr containing every want.
func (s *store) fails(stdin []byte, args []string, want ...string) result {
	s.t.Helper()
	r := s.run(stdin, args...)
	if r.err == nil {
		s.t.Fatalf("layerfs %s succeeded, want failure\nstdout: %s", strings.Join(args, " "), r.stdout)
	}
	for _, w := range want {
		if !strings.Contains(r.stderr, w) {
			s.t.Fatalf("layerfs %s: stderr %q does not mention %q", strings.Join(args, " "), r.stderr, w)
		}
	}
	return r
}

// assertEmpty checks the store holds no layer and no leftover.
func (s *store) assertLayers(n int) {
	s.t.Helper()
	ents, _ := os.ReadDir(filepath.Join(s.root, "layers"))
	if len(ents) != n {
		s.t.Fatalf("store holds %d layer dirs, want %d", len(ents), n)
	}
	tmp, _ := os.ReadDir(filepath.Join(s.root, "tmp"))
	if len(tmp) != 0 {
		s.t.Fatalf("store tmp/ holds leftovers: %v", tmp)
	}
}

// runHelper does a helper process's job and returns its exit status.
func runHelper(job string, args []string) int {
	switch job {
	case "truncate":
		// args: path, size: truncate(2) by path, which coreutils'
		// truncate does not make (it opens the file).
		if len(args) != 2 {
			break
		}
		size, err := strconv.ParseInt(args[1], 10, 64)
		if err == nil {
			err = os.Truncate(args[0], size)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return 0
	}
	fmt.Fprintf(os.Stderr, "helper %s %q: unknown job or arguments\n", job, args)
	return 2
}
