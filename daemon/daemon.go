// Package daemon puts a mount into the background the way a C program
// would fork after mounting: a Go program cannot fork, so the command
// re-executes itself as a child in a new session with a readiness pipe, and
// returns only once the child reports the mount ready (or why it failed).
// The child then serves until it is unmounted or signalled, and unmounts
// cleanly on SIGTERM, SIGINT and SIGHUP.
package daemon

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// readyFDEnv names the child's end of the readiness pipe.
const readyFDEnv = "LAYERFS_READY_FD"

// Start re-executes the running program (argv[0] kept, so a program that
// answers to several names keeps its name) with args, detached in a new
// session with its standard streams on /dev/null, or stderr on logPath
// when set. It waits until the child calls Ready or Fail, or exits.
func Start(args []string, env []string, logPath string) (pid int, err error) {
	exe, err := os.Executable()
	if err != nil {
		return 0, fmt.Errorf("start daemon: %w", err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		return 0, fmt.Errorf("start daemon: %w", err)
	}
	defer r.Close()
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		w.Close()
		return 0, fmt.Errorf("start daemon: %w", err)
	}
	defer devnull.Close()
	stderr := devnull
	if logPath != "" {
		if stderr, err = os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600); err != nil {
			w.Close()
			return 0, fmt.Errorf("start daemon: log file: %w", err)
		}
		defer stderr.Close()
	}
	cmd := &exec.Cmd{
		Path:       exe,
		Args:       append([]string{os.Args[0]}, args...),
		Env:        append(append(os.Environ(), env...), readyFDEnv+"=3"),
		Stdin:      devnull,
		Stdout:     devnull,
		Stderr:     stderr,
		ExtraFiles: []*os.File{w},
		// A new session: the daemon outlives the terminal and is not
		// killed by a ^C meant for the command that started it.
		SysProcAttr: &syscall.SysProcAttr{Setsid: true},
	}
	if err := cmd.Start(); err != nil {
		w.Close()
		return 0, fmt.Errorf("start daemon: %w", err)
	}
	w.Close() // the child holds the only write end now
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	line, rerr := bufio.NewReader(r).ReadString('\n')
	line = strings.TrimSpace(line)
	switch {
	case line == "ready":
		// Reap the child in the background; it is the daemon now.
		go func() { <-exited }()
		return cmd.Process.Pid, nil
	case strings.HasPrefix(line, "error: "):
		<-exited
		return 0, errors.New(strings.TrimPrefix(line, "error: "))
	}
	// EOF without a word: the child died before it could say anything.
	select {
	case werr := <-exited:
		return 0, fmt.Errorf("the daemon exited before the mount was ready (%v)", werr)
	case <-time.After(5 * time.Second):
		return 0, fmt.Errorf("the daemon closed its readiness pipe without a word (%v)", rerr)
	}
}

// Notifier is the child's end of the readiness pipe.
type Notifier struct{ f *os.File }

// FromEnv returns the notifier when this process was started by Start, and
// nil otherwise (a foreground run).
func FromEnv() *Notifier {
	v := os.Getenv(readyFDEnv)
	if v == "" {
		return nil
	}
	os.Unsetenv(readyFDEnv)
	fd, err := strconv.Atoi(v)
	if err != nil {
		return nil
	}
	return &Notifier{f: os.NewFile(uintptr(fd), "ready-pipe")}
}

// Ready tells the parent the mount is usable.
func (n *Notifier) Ready() {
	if n == nil {
		return
	}
	io.WriteString(n.f, "ready\n")
	n.f.Close()
}

// Fail tells the parent why the mount could not be made.
func (n *Notifier) Fail(err error) {
	if n == nil {
		return
	}
	fmt.Fprintf(n.f, "error: %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
	n.f.Close()
}

// Server is a mount being served.
type Server interface {
	Wait()
	Unmount() error
}

// ServeUntilSignal waits until srv ends (unmounted from outside), and
// unmounts it on SIGTERM, SIGINT or SIGHUP. A busy mount cannot be
// unmounted; the signal is then reported through logf and the daemon keeps
// serving: killing it would leave a dead mount behind.
func ServeUntilSignal(srv Server, logf func(format string, args ...any)) {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	done := make(chan struct{})
	go func() {
		srv.Wait()
		close(done)
	}()
	for {
		select {
		case <-done:
			return
		case sig := <-sigs:
			if err := srv.Unmount(); err != nil {
				logf("%v: cannot unmount: %v (still serving; unmount with umount -l)", sig, err)
			}
		}
	}
}
