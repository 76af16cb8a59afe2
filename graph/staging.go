package graph

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// staging is a directory in tmp/ that one process is building. It stays
// flocked while the process lives, so recovery can tell it from a leftover.
type staging struct {
	dir  string
	lock *os.File
	done bool
}

// newStaging creates and locks a staging dir. The store lock is held
// shared meanwhile, so a concurrent recovery (which holds it exclusively)
// never sees the dir between its creation and its lock.
func (s *Store) newStaging(kind string) (*staging, error) {
	unlock, err := flock(filepath.Join(s.root, "lock"), unix.LOCK_SH)
	if err != nil {
		return nil, err
	}
	defer unlock()
	dir, err := os.MkdirTemp(s.tmpDir(), stagingPrefix+kind+"-")
	if err != nil {
		return nil, fmt.Errorf("create staging dir: %w", err)
	}
	f, err := os.Open(dir)
	if err == nil {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	}
	if err != nil {
		if f != nil {
			f.Close()
		}
		os.RemoveAll(dir)
		return nil, fmt.Errorf("lock staging dir %s: %w", dir, err)
	}
	return &staging{dir: dir, lock: f}, nil
}

// committed tells discard that the dir was renamed into the store.
func (st *staging) committed() { st.done = true }

// discard removes the dir unless it was committed, then unlocks it.
func (st *staging) discard() {
	if !st.done {
		os.RemoveAll(st.dir)
	}
	st.lock.Close()
}

// recover removes what dead processes left in tmp/: staging dirs nobody
// holds locked, trash of interrupted deletes, temp files of interrupted
// record writes, and the layers of image imports that died half way.
func (s *Store) recover(ctx context.Context) error {
	unlock, err := s.lock()
	if err != nil {
		return err
	}
	defer unlock()
	ents, err := os.ReadDir(s.tmpDir())
	if err != nil {
		return fmt.Errorf("recover store %s: %w", s.root, err)
	}
	for _, e := range ents {
		if err := ctx.Err(); err != nil {
			return err
		}
		p := filepath.Join(s.tmpDir(), e.Name())
		if !e.IsDir() {
			// Loose files are written only under the store lock, which we hold.
			s.log.Info("removing leftover", "path", p)
			os.Remove(p)
			continue
		}
		f, err := os.Open(p)
		if err != nil {
			continue
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close() // a live process owns it
			continue
		}
		if strings.HasPrefix(e.Name(), stagingPrefix+importKind) {
			s.undoImportLocked(p)
		}
		s.log.Info("removing leftover", "path", p)
		if err := os.RemoveAll(p); err != nil {
			f.Close()
			return fmt.Errorf("recover store: remove %s: %w", p, err)
		}
		f.Close()
	}
	return nil
}

// Leftovers lists what recovery would remove now (for check).
func (s *Store) leftovers() ([]string, error) {
	ents, err := os.ReadDir(s.tmpDir())
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", s.tmpDir(), err)
	}
	var out []string
	for _, e := range ents {
		p := filepath.Join(s.tmpDir(), e.Name())
		if e.IsDir() {
			f, err := os.Open(p)
			if err != nil {
				continue
			}
			err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				continue
			}
		}
		out = append(out, p)
	}
	return out, nil
}

// undoImportLocked deletes the layers a dead image import had registered
// and that nothing else came to use meanwhile.
func (s *Store) undoImportLocked(dir string) {
	data, err := os.ReadFile(filepath.Join(dir, importJournal))
	if err != nil {
		return
	}
	lines := strings.Fields(string(data))
	// Newest first: children before their parents.
	for i := len(lines) - 1; i >= 0; i-- {
		id, err := digest.Parse(lines[i])
		if err != nil {
			continue
		}
		if users, err := s.Users(id); err != nil || len(users) > 0 {
			continue
		}
		if _, err := s.readLayer(id); err != nil {
			continue
		}
		s.log.Info("removing layer of an interrupted image import", "chainID", id)
		if err := s.removeLayerLocked(id); err != nil {
			s.log.Warn("cannot remove layer of an interrupted import", "chainID", id, "err", err)
		}
	}
}
