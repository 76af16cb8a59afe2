// Package graph is the layer store: a content-addressed graph of layers keyed
// by OCI chainID, each held as an overlay-native directory plus the
// tar-split record that reproduces its tar, and the images that name chains
// of them.
//
// On disk (all under one store directory):
//
//	store.json                  format version and the opaque-xattr namespace
//	lock                        flock: exclusive for changes to the namespace
//	layers/<hex>/layer.json     the layer record (Layer)
//	layers/<hex>/tar-split.json.gz
//	layers/<hex>/diff/          the layer's files, whiteouts as 0/0 devices
//	images/<hex>/image.json     the image record (Image), manifest.json, config.json
//	tmp/                        staging; anything here not locked by a live
//	                            process is a leftover and is removed on Open
//
// Every change is built in tmp/, synced and renamed into place, so a crash
// at any point leaves either the old or the new state. Processes cooperate
// through flock(2): the store lock serialises renames and deletes, and each
// staging directory is locked by the process building it, which is how Open
// tells a live import from a dead one.
package graph

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/userns"
	"github.com/layerfs/layerfs/whiteout"
)

const formatVersion = 1

// Config is the store's own record, fixed when the store is created.
type Config struct {
	Version int `json:"version"`
	// XattrNamespace is where opaque markers are written: "trusted" for a
	// store created by real root, "user" otherwise.
	XattrNamespace string `json:"xattrNamespace"`
	// Rootless stores cannot chown or make devices: ownership is kept in
	// user.containers.override_stat.
	Rootless bool `json:"rootless"`
}

// Store is an open layer store. It is safe for concurrent use, and several
// processes may open the same directory.
type Store struct {
	root   string
	config Config
	ns     whiteout.Namespace
	log    *slog.Logger
}

// Options tune Open.
type Options struct {
	Logger *slog.Logger
	// Rootless forces a new store into rootless mode; nil decides from the
	// caller's privileges. Ignored for an existing store.
	Rootless *bool
}

// DefaultRoot is where a store lives when none is named: LAYERFS_STORE,
// else /var/lib/layerfs for root, else $XDG_DATA_HOME/layerfs
// (~/.local/share/layerfs).
func DefaultRoot() (string, error) {
	if d := os.Getenv("LAYERFS_STORE"); d != "" {
		return d, nil
	}
	if os.Geteuid() == 0 && Privileged() {
		return "/var/lib/layerfs", nil
	}
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "layerfs"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("find the default store: %w (set --store or LAYERFS_STORE)", err)
	}
	return filepath.Join(home, ".local", "share", "layerfs"), nil
}

// Privileged reports whether the process is root in the initial user
// namespace, the only place trusted.* xattrs, arbitrary chown and device
// nodes are all available.
func Privileged() bool { return userns.PrivilegedRoot() }

// Open opens the store at root, creating it if needed, and cleans up what
// dead processes left half done.
func Open(ctx context.Context, root string, opts Options) (*Store, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", root, err)
	}
	s := &Store{root: abs, log: log}
	for _, d := range []string{"", "layers", "images", "tmp"} {
		if err := os.MkdirAll(filepath.Join(abs, d), 0o700); err != nil {
			return nil, fmt.Errorf("open store %s: %w", abs, err)
		}
	}
	if err := s.loadConfig(opts); err != nil {
		return nil, err
	}
	if err := s.recover(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// Root is the store directory.
func (s *Store) Root() string { return s.root }

// Config returns the store's record.
func (s *Store) Config() Config { return s.config }

// Namespace is the xattr namespace of the store's opaque markers.
func (s *Store) Namespace() whiteout.Namespace { return s.ns }

func (s *Store) loadConfig(opts Options) error {
	p := filepath.Join(s.root, "store.json")
	data, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		rootless := !Privileged()
		if opts.Rootless != nil {
			rootless = *opts.Rootless
		}
		ns := whiteout.Trusted
		if rootless {
			ns = whiteout.User
		}
		cfg := Config{Version: formatVersion, XattrNamespace: ns.String(), Rootless: rootless}
		unlock, lerr := s.lock()
		if lerr != nil {
			return lerr
		}
		defer unlock()
		// Another process may have won the race to create it.
		if data, err = os.ReadFile(p); errors.Is(err, fs.ErrNotExist) {
			if err := s.writeJSONAtomic(p, cfg); err != nil {
				return err
			}
			data, err = json.Marshal(cfg)
		}
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", p, err)
	}
	if err := json.Unmarshal(data, &s.config); err != nil {
		return fmt.Errorf("read %s: %w", p, err)
	}
	if s.config.Version != formatVersion {
		return fmt.Errorf("store %s has format version %d, this layerfs knows %d", s.root, s.config.Version, formatVersion)
	}
	ns, err := whiteout.ParseNamespace(s.config.XattrNamespace)
	if err != nil {
		return fmt.Errorf("read %s: %w", p, err)
	}
	s.ns = ns
	return nil
}

// lock takes the store lock exclusively. Held only for short namespace
// changes (renames, deletes, reference checks), never while applying a tar.
func (s *Store) lock() (func(), error) {
	return flock(filepath.Join(s.root, "lock"), unix.LOCK_EX)
}

func flock(path string, how int) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	for {
		err = unix.Flock(int(f.Fd()), how)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}

// writeJSONAtomic writes v to path through a synced temp file in tmp/ and a
// rename. Callers hold the store lock: recovery removes loose files in tmp/
// only while holding it.
func (s *Store) writeJSONAtomic(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", path, err)
	}
	return s.writeFileAtomic(path, append(data, '\n'))
}

func (s *Store) writeFileAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(s.tmpDir(), "file-"+filepath.Base(path)+"-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
