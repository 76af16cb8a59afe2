package graph

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/mountinfo"
)

// Mount is an entry of the store's mount table (mounts/<hash>.json).
type Mount struct {
	Target string `json:"target"`
	// View is the mounted view's ID; empty for a read-only mount of Layer.
	View  string        `json:"view,omitempty"`
	Layer digest.Digest `json:"layer"`
	// Driver is "kernel" or "fuse".
	Driver string `json:"driver"`
	// PID is the union daemon serving the mount (0 for the kernel driver).
	PID       int       `json:"pid,omitempty"`
	ReadOnly  bool      `json:"readOnly,omitempty"`
	Temporary bool      `json:"temporary,omitempty"`
	Started   time.Time `json:"started"`
	// KernelOptions are the options the kernel reports for a kernel
	// driver mount (layer paths left out), e.g. "redirect_dir=on".
	KernelOptions []string `json:"kernelOptions,omitempty"`
	// Dropped lists the features a kernel driver mount asked for and goes
	// without, each with why ("index=on: ...").
	Dropped []string `json:"dropped,omitempty"`
	// State is not stored; Mounts fills it in: "mounted", "dead" (the
	// daemon is gone and the mount answers ENOTCONN), or "unmounted" (the
	// target is no longer a mount point).
	State string `json:"state,omitempty"`
}

// Mount states.
const (
	StateMounted   = "mounted"
	StateDead      = "dead"
	StateUnmounted = "unmounted"
)

const mountsDir = "mounts"

func (s *Store) mountPath(target string) string {
	return filepath.Join(s.root, mountsDir, digest.FromString(target).Encoded()[:32]+".json")
}

// MountLogPath is where the daemon serving target logs (beside its entry).
func (s *Store) MountLogPath(target string) (string, error) {
	if err := os.MkdirAll(filepath.Join(s.root, mountsDir), 0o700); err != nil {
		return "", fmt.Errorf("mount log for %s: %w", target, err)
	}
	return strings.TrimSuffix(s.mountPath(target), ".json") + ".log", nil
}

// AddMount records a mount.
func (s *Store) AddMount(m Mount) error {
	unlock, err := s.lock()
	if err != nil {
		return err
	}
	defer unlock()
	if err := os.MkdirAll(filepath.Join(s.root, mountsDir), 0o700); err != nil {
		return fmt.Errorf("record mount %s: %w", m.Target, err)
	}
	m.State = ""
	return s.writeJSONAtomic(s.mountPath(m.Target), m)
}

// RemoveMount forgets the mount at target.
func (s *Store) RemoveMount(target string) error {
	unlock, err := s.lock()
	if err != nil {
		return err
	}
	defer unlock()
	err = os.Remove(s.mountPath(target))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("forget mount %s: %w", target, err)
	}
	return nil
}

// Mounts returns the mount table with each entry's State.
func (s *Store) Mounts() ([]Mount, error) {
	ents, err := os.ReadDir(filepath.Join(s.root, mountsDir))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	mounted, err := mountPoints()
	if err != nil {
		return nil, err
	}
	var out []Mount
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		data, err := os.ReadFile(filepath.Join(s.root, mountsDir, e.Name()))
		if err != nil {
			continue
		}
		var m Mount
		if json.Unmarshal(data, &m) != nil {
			continue
		}
		switch {
		case !mounted[m.Target]:
			m.State = StateUnmounted
		case m.Driver == "fuse" && !daemonAlive(m.PID):
			m.State = StateDead
		default:
			m.State = StateMounted
		}
		out = append(out, m)
	}
	return out, nil
}

// FindMount finds the mount table entry for a target path or a view.
func (s *Store) FindMount(ref string) (*Mount, error) {
	mounts, err := s.Mounts()
	if err != nil {
		return nil, err
	}
	if abs, err := filepath.Abs(ref); err == nil {
		for i := range mounts {
			if mounts[i].Target == abs {
				return &mounts[i], nil
			}
		}
	}
	if v, err := s.View(ref); err == nil {
		for i := range mounts {
			if mounts[i].View == v.ID {
				return &mounts[i], nil
			}
		}
		return nil, fmt.Errorf("view %s is not mounted", ref)
	}
	return nil, fmt.Errorf("%s: no layerfs mount there (see layerfs mounts): %w", ref, ErrNotFound)
}

// daemonAlive reports whether pid is a live layerfs process.
func daemonAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	if err := unix.Kill(pid, 0); err != nil && !errors.Is(err, unix.EPERM) {
		return false
	}
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return false
	}
	// A reused pid would not be running layerfs.
	return strings.Contains(string(cmdline), "layerfs")
}

// mountPoints returns the mount points of this mount namespace.
func mountPoints() (map[string]bool, error) {
	points, err := mountinfo.Points()
	if err != nil {
		return nil, err
	}
	out := make(map[string]bool, len(points))
	for _, p := range points {
		out[p] = true
	}
	return out, nil
}
