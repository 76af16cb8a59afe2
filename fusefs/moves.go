package fusefs

import (
	"errors"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// The union finds an object by the path the tree gives (its names from the
// root), and a name change (unlink, rmdir, rename: a move) changes the
// names on disk first and the tree after. The kernel locks only the
// directories whose entries a request changes, so a request may come while
// a move elsewhere is half done (a rename of a directory above the object,
// or of the object itself), and its path lead nowhere or to another
// object.
//
// A move of a directory changes the path of everything below it, so it
// runs alone: it holds moves.mu exclusively. The requests that change
// names (the other moves, and those that make names: create, mkdir,
// mknod, symlink, link, tmpfile) hold it shared, so their paths stay good
// throughout. The requests that only find things (lookup, readdir, and
// every request on a node) take no lock: one that finds nothing where its
// path led while a move was in flight, or after one ended, waits for the
// moves in flight (settle) and goes again (retryMoved, retryInDir).
type moves struct {
	mu sync.RWMutex
	// moving counts the moves in flight; gen counts those ended, and
	// dirGen those of directories; dirMoving says one is in flight.
	moving    int64
	gen       uint64
	dirGen    uint64
	dirMoving bool
	// count guards the counters; ended is signalled as a move ends.
	count sync.Mutex
	ended sync.Cond
}

// beginMove starts a move; dirs says a directory moves. A move must not
// call settle: it would wait for itself.
func (u *union) beginMove(dirs bool) {
	m := &u.moves
	if dirs {
		m.mu.Lock()
	} else {
		m.mu.RLock()
	}
	m.count.Lock()
	m.moving++
	m.dirMoving = m.dirMoving || dirs
	m.count.Unlock()
}

// endMove ends a move beginMove started.
func (u *union) endMove(dirs bool) {
	m := &u.moves
	u.viewGen.Add(1) // names of lower hardlink groups may have gone: recount
	m.count.Lock()
	m.moving--
	m.gen++
	if dirs {
		m.dirGen++
		m.dirMoving = false
	}
	m.ended.Broadcast()
	m.count.Unlock()
	if dirs {
		m.mu.Unlock()
	} else {
		m.mu.RUnlock()
	}
}

// holdNames keeps directory moves out while a request makes a name.
func (u *union) holdNames()    { u.moves.mu.RLock() }
func (u *union) releaseNames() { u.moves.mu.RUnlock() }

// settle waits until as many moves have ended as were in flight when it
// was called (those, unless later ones ended first: the caller's retry
// then fails again and it waits again). It takes no lock a request holds,
// so one that holds names may settle.
func (u *union) settle() {
	m := &u.moves
	m.count.Lock()
	until := m.gen + uint64(m.moving)
	for m.moving > 0 && m.gen < until {
		m.ended.Wait()
	}
	m.count.Unlock()
}

// moveMark is when a request computed its paths, for movedSince.
type moveMark struct{ gen, dirGen uint64 }

func (u *union) markMoves() moveMark {
	m := &u.moves
	m.count.Lock()
	defer m.count.Unlock()
	return moveMark{gen: m.gen, dirGen: m.dirGen}
}

// movedSince reports whether a path computed after mark may lead nowhere
// because of a move in flight or ended since. dirsOnly: only directory
// moves count, as for the path of a directory, which only those change.
func (u *union) movedSince(mark moveMark, dirsOnly bool) bool {
	m := &u.moves
	m.count.Lock()
	defer m.count.Unlock()
	if dirsOnly {
		return m.dirMoving || m.dirGen != mark.dirGen
	}
	return m.moving > 0 || m.gen != mark.gen
}

// maxMoveRetries bounds the retries of one request on a node under a
// stream of moves of it.
const maxMoveRetries = 8

// retryMoved makes call at n's location l, and again at n's location now
// when it found no object there (ENOENT; ELOOP from an O_NOFOLLOW open
// that found a symlink), or (st given, filled by call) another object,
// while a move may have made the path stale. Nobody knows when the caller
// computed l, so a first miss is always tried again. It returns the
// location the last call was made at.
func (n *node) retryMoved(l loc, st *unix.Stat_t, call func(loc) error) (loc, error) {
	u := n.u
	var mark moveMark
	for tries := 0; ; tries++ {
		err := call(l)
		if !l.upper || l.fd != u.upper.fd || tries == maxMoveRetries {
			return l, err
		}
		missing := errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ELOOP)
		if !missing && (err != nil || st == nil || n.isObject(st, l)) {
			return l, err
		}
		if tries > 0 && !u.movedSince(mark, false) {
			return l, err // the path was current: that is the answer
		}
		u.settle()
		mark = u.markMoves()
		now, errno := n.where()
		if errno != 0 {
			return l, errno
		}
		l = now
	}
}

// retryInDir runs op, a request that finds names in a directory (lookup,
// readdir), once more if it answers ENOENT while a directory move may have
// made the directory's path stale: then holding names, so that none can.
func (u *union) retryInDir(op func() syscall.Errno) syscall.Errno {
	mark := u.markMoves()
	errno := op()
	if errno != syscall.ENOENT || !u.movedSince(mark, true) {
		return errno
	}
	u.holdNames()
	defer u.releaseNames()
	return op()
}
