package fusefs

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/ownertable"
	"github.com/layerfs/layerfs/statoverride"
)

// Special owners. Linux refuses user.* xattrs on symlinks, FIFOs and
// sockets, so a rootless layer keeps their override_stat records in a
// table file beside it (package ownertable; Options.LowerOwnerTables),
// and the union keeps those of the upper in Options.UpperOwnerTable.
// A record shows exactly as an override_stat xattr does (its owner and
// group as they are, squash options on top; a symlink's mode stays 0777,
// as on every Linux file system), and only on an object of the type it
// names. Copy-up carries an object's record into the upper table, a chown
// or chmod the daemon may not do itself (a plain user's daemon, a user
// namespace without the id) is recorded there, and unlink, rename and
// link keep the upper table in step with the upper's names. Memory: the
// records of a layer's table are loaded at the first lookup of one of its
// special objects and kept for the mount, nothing per node.
//
// The upper table is appended to, one line per change (O(1) whatever its
// size, so a chown -R over thousands of symlinks stays linear), and
// rewritten compact (work-dir temp file, fsync unless Volatile, rename)
// when it holds more than twice the lines it needs, and when a crash cut
// its last line short. Appends are as durable as the upper's own
// metadata changes, which the union does not sync either.

// specialOwners are a mount's tables.
type specialOwners struct {
	lowers []*lowerOwners // by lower index; nil: none
	upper  *upperOwners   // nil: none
}

// lowerOwners is one lower layer's table, read once when first needed.
type lowerOwners struct {
	path string
	once sync.Once
	t    ownertable.Table
}

func (l *lowerOwners) get(u *union, rel string) (statoverride.Stat, bool) {
	l.once.Do(func() {
		t, _, err := ownertable.ReadFile(l.path)
		if err != nil {
			// `layerfs check` reports it; the objects show as on disk.
			u.log.Warn("cannot read a layer's special-owners table: its symlinks and FIFOs show their owners on disk", "err", err)
		}
		l.t = t
	})
	rec, ok := l.t[rel]
	return rec, ok
}

// upperOwners is the upper's table: the map of what the file says and the
// file, appended to under mu.
type upperOwners struct {
	path string
	mu   sync.Mutex
	t    ownertable.Table
	f    *os.File // open for appending; nil until the first change
	// lines the file holds (entries applied), and whether its last
	// one was torn by a crash: either makes the next change compact it.
	lines int
	torn  bool
}

func openSpecialOwners(o *Options) (specialOwners, error) {
	var s specialOwners
	for i, p := range o.LowerOwnerTables {
		if p != "" {
			if s.lowers == nil {
				s.lowers = make([]*lowerOwners, len(o.Lowers))
			}
			s.lowers[i] = &lowerOwners{path: p}
		}
	}
	if o.UpperOwnerTable != "" {
		t, info, err := ownertable.ReadFile(o.UpperOwnerTable)
		if err != nil {
			return s, fmt.Errorf("upper owner table: %w", err)
		}
		s.upper = &upperOwners{path: o.UpperOwnerTable, t: t, lines: info.Lines, torn: info.Torn}
	}
	return s, nil
}

func (s *specialOwners) close() {
	if s.upper != nil && s.upper.f != nil {
		s.upper.f.Close()
	}
}

// specialRecord finds the record of a special object of the view: under
// upperRel in the upper table when inUpper is set, then under lowerRel in
// the table of lower lowerLayer (>= 0: the object is, or, indexed, was
// copied up from, that layer's).
func (u *union) specialRecord(inUpper bool, upperRel string, lowerLayer int, lowerRel string) (statoverride.Stat, bool) {
	s := &u.owners
	if inUpper && s.upper != nil {
		s.upper.mu.Lock()
		rec, ok := s.upper.t[upperRel]
		s.upper.mu.Unlock()
		if ok {
			return rec, true
		}
	}
	if lowerLayer >= 0 && lowerLayer < len(s.lowers) && s.lowers[lowerLayer] != nil {
		return s.lowers[lowerLayer].get(u, lowerRel)
	}
	return statoverride.Stat{}, false
}

// presentSpecialOwner puts the record of a symlink, FIFO or socket (stat
// st) into out, as fillAttr puts an override_stat xattr.
func (u *union) presentSpecialOwner(st *unix.Stat_t, out *fuse.Attr, inUpper bool, upperRel string, lowerLayer int, lowerRel string) {
	ifmt := st.Mode & unix.S_IFMT
	if !ownertable.NeedsTable(ifmt) {
		return
	}
	rec, ok := u.specialRecord(inUpper, upperRel, lowerLayer, lowerRel)
	if !ok || rec.HasType() && rec.Mode&unix.S_IFMT != ifmt {
		return
	}
	out.Uid, out.Gid = rec.UID, rec.GID
	if ifmt != unix.S_IFLNK {
		out.Mode = ifmt | rec.Mode&07777
	}
	if u.opts.SquashUID != nil {
		out.Uid = *u.opts.SquashUID
	}
	if u.opts.SquashGID != nil {
		out.Gid = *u.opts.SquashGID
	}
}

// upperKey is n's name in the upper table, for an object at l: its upper
// path (for one in the hardlink index, the name the node goes by). ok is
// false when it has none (unlinked, still open).
func (u *union) upperKey(n *node, l loc) (string, bool) {
	switch {
	case u.upper != nil && l.fd == u.upper.fd:
		return l.rel, true
	case l.upper && l.fd == u.workFd && u.workFd >= 0:
		return n.upperRel()
	}
	return "", false
}

// set records rec for rel (and, for an object with more names, for every
// other name of it the table holds: they are one inode).
func (t *upperOwners) set(u *union, rel string, rec statoverride.Stat, st *unix.Stat_t) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	var b []byte
	b = ownertable.AppendSet(b, rel, rec)
	t.t[rel] = rec
	n := 1
	if st != nil && st.Nlink > 1 {
		for p := range t.t {
			var ost unix.Stat_t
			if p != rel && u.upper.lstat(p, &ost) == nil && ost.Dev == st.Dev && ost.Ino == st.Ino {
				t.t[p] = rec
				b = ownertable.AppendSet(b, p, rec)
				n++
			}
		}
	}
	return t.appendLocked(u, b, n)
}

// move keeps the table in step with a rename in the upper: what was
// recorded under from (and below it) moves to to, what to held goes;
// exchange swaps them.
func (t *upperOwners) move(u *union, from, to string, exchange bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	under := func(p, dir string) (string, bool) {
		if p == dir {
			return "", true
		}
		rest, ok := strings.CutPrefix(p, dir+"/")
		return "/" + rest, ok
	}
	type moved struct {
		p   string
		rec statoverride.Stat
	}
	var fromRecs, toRecs []moved
	for p, rec := range t.t {
		if rest, ok := under(p, from); ok {
			fromRecs = append(fromRecs, moved{rest, rec})
		} else if rest, ok := under(p, to); ok {
			toRecs = append(toRecs, moved{rest, rec})
		}
	}
	if len(fromRecs) == 0 && len(toRecs) == 0 {
		return
	}
	var b []byte
	n := 0
	for _, m := range fromRecs {
		delete(t.t, from+m.p)
		b = ownertable.AppendRemove(b, from+m.p)
		n++
	}
	for _, m := range toRecs {
		delete(t.t, to+m.p)
		b = ownertable.AppendRemove(b, to+m.p)
		n++
	}
	for _, m := range fromRecs {
		t.t[to+m.p] = m.rec
		b = ownertable.AppendSet(b, to+m.p, m.rec)
		n++
	}
	if exchange {
		for _, m := range toRecs {
			t.t[from+m.p] = m.rec
			b = ownertable.AppendSet(b, from+m.p, m.rec)
			n++
		}
	}
	if err := t.appendLocked(u, b, n); err != nil {
		u.log.Warn("cannot record a rename in the upper's special-owners table", "from", from, "to", to, "err", err)
	}
}

// drop forgets the record of rel, whose object left the upper (or was
// never there: a new object must not inherit a stale record).
func (t *upperOwners) drop(u *union, rel string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.t[rel]; !ok {
		return
	}
	delete(t.t, rel)
	if err := t.appendLocked(u, ownertable.AppendRemove(nil, rel), 1); err != nil {
		u.log.Warn("cannot record a removal in the upper's special-owners table", "path", rel, "err", err)
	}
}

// appendLocked writes the lines b (n entries) at the end of the file, or
// rewrites the file compact when that is due. Callers hold t.mu and have
// applied the lines to t.t.
func (t *upperOwners) appendLocked(u *union, b []byte, n int) error {
	t.lines += n
	if t.torn || t.lines > 2*len(t.t)+64 {
		return t.compactLocked(u)
	}
	if t.f == nil {
		f, err := os.OpenFile(t.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return fmt.Errorf("append to %s: %w", t.path, err)
		}
		t.f = f
	}
	if _, err := t.f.Write(b); err != nil {
		// A short write may leave a torn line: rewrite next time.
		t.torn = true
		return fmt.Errorf("append to %s: %w", t.path, err)
	}
	return nil
}

// compactLocked replaces the file by the table, compact.
func (t *upperOwners) compactLocked(u *union) error {
	if t.f != nil {
		t.f.Close()
		t.f = nil
	}
	sync := !u.opts.Volatile
	err := errors.New("no work dir")
	if u.workFd >= 0 {
		err = ownertable.ReplaceFile(t.path, u.workPath+"/"+u.tmpName(), t.t, sync)
	}
	if errors.Is(err, unix.EXDEV) || u.workFd < 0 {
		// The table lives on another file system than the work dir.
		err = ownertable.ReplaceFile(t.path, t.path+".tmp", t.t, sync)
	}
	if err != nil {
		return err
	}
	t.lines, t.torn = len(t.t), false
	return nil
}

// carrySpecialOwner gives the upper names rels of a copied-up object the
// record of its lower object (layer li, path lowerRel).
func (u *union) carrySpecialOwner(li int, lowerRel string, st *unix.Stat_t, rels ...string) error {
	t := u.owners.upper
	if t == nil || !ownertable.NeedsTable(st.Mode) {
		return nil
	}
	rec, ok := u.specialRecord(false, "", li, lowerRel)
	if !ok {
		return nil
	}
	for _, rel := range rels {
		if err := t.set(u, rel, rec, nil); err != nil {
			return err
		}
	}
	return nil
}

// linkSpecialOwner gives rel, a new upper name of n (at l), n's record.
func (u *union) linkSpecialOwner(n *node, l loc, rel string) {
	t := u.owners.upper
	if t == nil {
		return
	}
	var st unix.Stat_t
	if l.lstat(&st) != nil || !ownertable.NeedsTable(st.Mode) {
		return
	}
	key, _ := u.upperKey(n, l)
	n.mu.Lock()
	li, indexed := int(n.lowerLayer), n.indexedLocked()
	lowerRel, _ := n.lowerRelLocked()
	n.mu.Unlock()
	if !indexed {
		li = -1
	}
	if rec, ok := u.specialRecord(key != "", key, li, lowerRel); ok {
		if err := t.set(u, rel, rec, nil); err != nil {
			u.log.Warn("cannot record a link in the upper's special-owners table", "path", rel, "err", err)
		}
	}
}

// dropSpecialOwner forgets rel's record in the upper table, if any.
func (u *union) dropSpecialOwner(rel string) {
	if u.owners.upper != nil {
		u.owners.upper.drop(u, rel)
	}
}

// moveSpecialOwners follows a rename in the upper.
func (u *union) moveSpecialOwners(from, to string, exchange bool) {
	if u.owners.upper != nil {
		u.owners.upper.move(u, from, to, exchange)
	}
}

// setSpecialOwner is Setattr's owner and mode change of a symlink, FIFO
// or socket (at l, stat st) of a view with an upper table. done is false
// where the ordinary path applies: no table, another type, nothing of
// owner and mode asked, or no record yet and a chown the daemon may do
// itself. Otherwise the record changes: the one the object has, or one
// made from what the view shows (its owner on disk could not change).
func (u *union) setSpecialOwner(n *node, l loc, st *unix.Stat_t, in *fuse.SetAttrIn) (done bool, errno syscall.Errno) {
	t := u.owners.upper
	mode, hasMode := in.GetMode()
	uid, hasUID := in.GetUID()
	gid, hasGID := in.GetGID()
	ifmt := st.Mode & unix.S_IFMT
	if t == nil || !ownertable.NeedsTable(ifmt) || !(hasMode || hasUID || hasGID) {
		return false, 0
	}
	key, ok := u.upperKey(n, l)
	if !ok {
		return false, 0
	}
	if hasMode && ifmt == unix.S_IFLNK {
		return true, syscall.EOPNOTSUPP // Linux has no modes for symlinks
	}
	t.mu.Lock()
	rec, found := t.t[key]
	t.mu.Unlock()
	if found && rec.HasType() && rec.Mode&unix.S_IFMT != ifmt {
		found = false // stale: not this object's
	}
	if !found {
		if hasUID || hasGID {
			err := u.chownNative(l.path(), hasUID, uid, hasGID, gid)
			if err == nil {
				return false, 0 // mode, if asked, natively too
			}
			if !errors.Is(err, unix.EPERM) && !errors.Is(err, unix.EINVAL) {
				return true, toErrno(err)
			}
		} else {
			return false, 0
		}
		// What the view shows, but for squashing, which only shows.
		rec = statoverride.Stat{UID: idMapper{m: u.uids.m}.toView(st.Uid), GID: idMapper{m: u.gids.m}.toView(st.Gid), Mode: st.Mode}
	}
	if hasUID {
		rec.UID = uid
	}
	if hasGID {
		rec.GID = gid
	}
	if hasMode {
		rec.Mode = ifmt | mode&07777
	} else {
		rec.Mode = ifmt | rec.Mode&07777
	}
	if err := t.set(u, key, rec, st); err != nil {
		u.log.Warn("cannot write the upper's special-owners table", "err", err)
		return true, syscall.EIO
	}
	return true, 0
}

// chownNative changes the owner on disk, the view's IDs mapped; an ID no
// range maps is EINVAL, as chown answers for an ID the user namespace
// does not map.
func (u *union) chownNative(path string, hasUID bool, uid uint32, hasGID bool, gid uint32) error {
	du, dg := -1, -1
	if hasUID {
		v, ok := u.uids.toDisk(uid)
		if !ok {
			return unix.EINVAL
		}
		du = int(v)
	}
	if hasGID {
		v, ok := u.gids.toDisk(gid)
		if !ok {
			return unix.EINVAL
		}
		dg = int(v)
	}
	return pathRef(path).chown(du, dg)
}

// getOverride reads the override_stat xattr of the object at path (stat
// st), without asking for one that Linux would not keep.
func getOverride(path string, st *unix.Stat_t) (statoverride.Stat, bool, error) {
	if ownertable.NeedsTable(st.Mode) {
		return statoverride.Stat{}, false, nil
	}
	return pathRef(path).override()
}

// showSpecialOwner is presentSpecialOwner for node n at l (from
// whereLocked), stat st.
func (n *node) showSpecialOwner(l loc, st *unix.Stat_t, out *fuse.Attr, indexed bool, lowerLayer int) {
	if !ownertable.NeedsTable(st.Mode) {
		return
	}
	u := n.u
	if !l.upper {
		u.presentSpecialOwner(st, out, false, "", lowerLayer, l.rel)
		return
	}
	key, ok := u.upperKey(n, l)
	li, lowerRel := -1, ""
	if indexed {
		// A name the index serves that was never linked in the upper
		// still has its lower record.
		n.mu.Lock()
		lowerRel, _ = n.lowerRelLocked()
		n.mu.Unlock()
		li = lowerLayer
	}
	u.presentSpecialOwner(st, out, ok, key, li, lowerRel)
}
