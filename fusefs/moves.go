package fusefs

import (
	"errors"
	"sync"

	"golang.org/x/sys/unix"
)

// The union finds an object by the path the tree gives (its names from the
// root), and a name change (unlink, rmdir, rename: a move) changes the
// names on disk first and the tree after. The kernel locks only the
// directories whose entries a request changes, so without more a request
// could come while a move elsewhere is half done (a rename of a directory
// above its object, or of the object itself), and its path lead nowhere or
// to another object.
//
// A move of a directory changes the path of everything below it, so it
// runs alone: it holds moves.mu exclusively. Every other request that
// computes paths holds moves.mu shared (holdNames, taken once per request
// by the bridge; a move by beginMove), so no directory moves under it.
// A move of a file changes only that file's path: a request on the file
// that finds nothing at its path, or another object, while such a move
// was in flight or after one ended waits for the moves in flight (settle)
// and goes again (retryMoved).
//
// A request that holds moves.mu shared for long (a copy-up of a big file)
// delays directory renames, and, since a waiting writer stops new
// readers, every request behind them; fuse-overlayfs, threaded, holds one
// lock for every request.
type moves struct {
	mu sync.RWMutex
	// moving counts the moves in flight and gen those ended; count
	// guards both, and ended is signalled as a move ends.
	moving int64
	gen    uint64
	count  sync.Mutex
	ended  sync.Cond
}

// beginMove starts a move; dirs says a directory moves. A move must not
// call settle (it would wait for itself) or holdNames (Go's read locks do
// not nest).
func (u *union) beginMove(dirs bool) {
	m := &u.moves
	if dirs {
		m.mu.Lock()
	} else {
		m.mu.RLock()
	}
	m.count.Lock()
	m.moving++
	m.count.Unlock()
}

// endMove ends a move beginMove started.
func (u *union) endMove(dirs bool) {
	m := &u.moves
	u.viewGen.Add(1) // names of lower hardlink groups may have gone: recount
	m.count.Lock()
	m.moving--
	m.gen++
	m.ended.Broadcast()
	m.count.Unlock()
	if dirs {
		m.mu.Unlock()
	} else {
		m.mu.RUnlock()
	}
}

// holdNames keeps directory moves out while a request computes and uses
// paths; releaseNames ends that. Requests take it once, in the bridge.
func (u *union) holdNames()    { u.moves.mu.RLock() }
func (u *union) releaseNames() { u.moves.mu.RUnlock() }

// settle waits until as many moves have ended as were in flight when it
// was called (those, unless later ones ended first: the caller's retry
// then fails again and it waits again). It takes no lock a request holds.
func (u *union) settle() {
	m := &u.moves
	m.count.Lock()
	until := m.gen + uint64(m.moving)
	for m.moving > 0 && m.gen < until {
		m.ended.Wait()
	}
	m.count.Unlock()
}

// movesMark returns the number of moves ended, and whether one is in
// flight.
func (u *union) movesMark() (gen uint64, moving bool) {
	m := &u.moves
	m.count.Lock()
	defer m.count.Unlock()
	return m.gen, m.moving > 0
}

// maxMoveRetries bounds the retries of one request under a stream of
// moves of its object.
const maxMoveRetries = 8

// retryMoved makes call at n's location l, and again at n's location now
// when it found no object there (ENOENT; ELOOP from an O_NOFOLLOW open
// that found a symlink), or (st given, filled by call) another object,
// while a move of a file may have made the path stale. Nobody knows when
// the caller computed l, so a first miss is always tried again. It
// returns the location the last call was made at.
func (n *node) retryMoved(l loc, st *unix.Stat_t, call func(loc) error) (loc, error) {
	u := n.u
	var gen uint64
	for tries := 0; ; tries++ {
		err := call(l)
		if !l.upper || l.fd != u.upper.fd || tries == maxMoveRetries {
			return l, err
		}
		missing := errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ELOOP)
		if !missing && (err != nil || st == nil || n.isObject(st, l)) {
			return l, err
		}
		if tries > 0 {
			if now, moving := u.movesMark(); now == gen && !moving {
				return l, err // the path was current: that is the answer
			}
		}
		u.settle()
		gen, _ = u.movesMark()
		now, errno := n.where()
		if errno != 0 {
			return l, errno
		}
		l = now
	}
}
