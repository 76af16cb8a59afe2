package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The opens the passthrough probe makes.
const (
	probeLowerRW = "a lower file in a writable view"
	probeUpperRW = "an upper file in a writable view"
	probeLowerRO = "a lower file in a read-only view"
)

// passthroughProbe is what the union's debug log said about each open.
type passthroughProbe struct {
	paths  map[string]string // probe -> the I/O path the union chose
	backed map[string]bool   // probe -> the kernel took a backing file
	err    error             // the probe could not run
}

// probePassthrough mounts the union in the foreground with -d on small
// layers, opens a lower and an upper file, then a lower file in a
// read-only view, and reads in the log which I/O path each open took and
// whether the kernel accepted the backing file (FUSE passthrough: reads
// and writes then go from the kernel to that file, not through the
// daemon). The union decides by itself; this only reports.
func probePassthrough(ctx context.Context, h *harness, m *mounter, dir string) (*passthroughProbe, error) {
	p := &passthroughProbe{paths: map[string]string{}, backed: map[string]bool{}}
	lower, upper, work, mnt := filepath.Join(dir, "lower"), filepath.Join(dir, "upper"), filepath.Join(dir, "work"), filepath.Join(dir, "mnt")
	for _, d := range []string{lower, upper, work, mnt} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("passthrough probe: %w", err)
		}
	}
	data := make([]byte, 1<<20)
	for _, f := range []string{filepath.Join(lower, "lower.bin"), filepath.Join(upper, "upper.bin")} {
		if err := os.WriteFile(f, data, 0o644); err != nil {
			return nil, fmt.Errorf("passthrough probe: %w", err)
		}
	}
	steps := []struct {
		spec  viewSpec
		files map[string]string // probe -> file in the view
	}{
		{viewSpec{lowers: []string{lower}, upper: upper, work: work},
			map[string]string{probeLowerRW: "lower.bin", probeUpperRW: "upper.bin"}},
		{viewSpec{lowers: []string{lower}}, map[string]string{probeLowerRO: "lower.bin"}},
	}
	for i, s := range steps {
		logFile := filepath.Join(dir, fmt.Sprintf("debug-%d.log", i))
		if err := debugMount(ctx, h, m, mnt, s.spec, logFile, func() error {
			for _, f := range s.files {
				if _, err := os.ReadFile(filepath.Join(mnt, f)); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			p.err = err
			h.log.Warn("passthrough probe failed", "err", err)
			return p, nil
		}
		if err := p.readLog(logFile, s.files); err != nil {
			p.err = err
			return p, nil
		}
	}
	h.log.Info("union: passthrough probe", "paths", p.paths, "backing accepted", p.backed)
	return p, nil
}

// debugMount runs layerfs-overlay -f -d on spec at mnt with its log in
// logFile, calls use once the mount is up, and unmounts; the mount never
// outlives the call.
func debugMount(ctx context.Context, h *harness, m *mounter, mnt string, spec viewSpec, logFile string, use func() error) error {
	log, err := os.Create(logFile)
	if err != nil {
		return err
	}
	defer log.Close()
	cmd := exec.Command(m.overlayBin, "-f", "-d", "-o", overlayOptions(spec), mnt)
	cmd.Args[0] = "layerfs-overlay"
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("layerfs-overlay -f -d: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		if mounted(mnt) {
			if err := unix.Unmount(mnt, 0); err != nil {
				unix.Unmount(mnt, unix.MNT_DETACH)
			}
		}
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !mounted(mnt) {
		select {
		case err := <-exited:
			exited <- err
			return fmt.Errorf("layerfs-overlay -f -d exited before mounting (%v); see %s", err, logFile)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return errors.New("layerfs-overlay -f -d did not mount within 10 s")
		}
	}
	return use()
}

// readLog finds, for each probed file, the union's "open" line (which
// names the I/O path it chose) and the reply to that OPEN, which carries
// "backing=ID" when the kernel accepted the backing file.
func (p *passthroughProbe) readLog(logFile string, files map[string]string) error {
	f, err := os.Open(logFile)
	if err != nil {
		return err
	}
	defer f.Close()
	byPath := map[string]string{}
	for probe, name := range files {
		byPath[name] = probe
	}
	var pending string // the probe whose OPEN reply comes next
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if strings.Contains(l, "msg=open ") {
			probe, ok := byPath[logValue(l, "path")]
			if !ok {
				continue
			}
			p.paths[probe] = logValue(l, "io")
			pending = probe
			continue
		}
		if pending != "" && strings.Contains(l, "tx ") && strings.Contains(l, "Fh ") {
			p.backed[pending] = strings.Contains(l, "backing=")
			pending = ""
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	for probe := range files {
		if _, ok := p.paths[probe]; !ok {
			return fmt.Errorf("the union's debug log %s names no open of %s", logFile, files[probe])
		}
	}
	return nil
}

// logValue is key's value in a slog text line (quoted or not).
func logValue(line, key string) string {
	i := strings.Index(line, " "+key+"=")
	if i < 0 {
		return ""
	}
	v := line[i+len(key)+2:]
	if strings.HasPrefix(v, `"`) {
		if j := strings.Index(v[1:], `"`); j >= 0 {
			return v[1 : j+1]
		}
		return v[1:]
	}
	if j := strings.IndexByte(v, ' '); j >= 0 {
		return v[:j]
	}
	return v
}

// passthrough reports whether the probe's open was passed through.
func (p *passthroughProbe) passthrough(probe string) bool { return p.err == nil && p.backed[probe] }

// io says, for the table, which path the probe's open took.
func (p *passthroughProbe) io(probe string) string {
	if p.err != nil {
		return "unknown (the probe failed)"
	}
	if p.backed[probe] {
		return "on"
	}
	return "off (" + p.paths[probe] + ")"
}

// text is the paragraph of the intro about passthrough.
func (p *passthroughProbe) text() string {
	if p.err != nil {
		return "Passthrough: the probe (a `layerfs-overlay -f -d` mount whose log says which I/O path each open took) failed: " + p.err.Error() + "."
	}
	var s strings.Builder
	s.WriteString("Passthrough (FUSE_PASSTHROUGH: the kernel reads and writes the backing file itself, not through the daemon) is decided by the union itself, file by file; `layerfs-overlay -d` logs the choice. A probe mount before the runs found:")
	for _, probe := range []string{probeLowerRW, probeUpperRW, probeLowerRO} {
		state := "not passed through"
		if p.backed[probe] {
			state = "passed through (the kernel accepted the backing file)"
		}
		fmt.Fprintf(&s, " %s: %s, %s;", probe, p.paths[probe], state)
	}
	if !p.backed[probeLowerRW] {
		s.WriteString(" so in the writable views below every read of a lower file goes through the daemon (with the page cache kept across opens)")
		if p.backed[probeLowerRO] {
			s.WriteString(", and only the read-only view's reads bypass it")
		}
		s.WriteString(".")
	} else {
		s.WriteString(" so reads of lower files bypass the daemon.")
	}
	s.WriteString(" fuse-overlayfs does not use passthrough.")
	return s.String()
}
