package fusefs

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// Rename follows rename(2) and renameat2(2) (RENAME_NOREPLACE,
// RENAME_EXCHANGE). Both objects are copied up first. A directory that has
// lower layers is moved in the upper and given overlayfs's redirect xattr
// ({trusted,user}.overlay.redirect = "/old/lower/path"), which is O(1) and
// what kernel overlayfs with redirect_dir=on writes and reads, instead of
// answering EXDEV. An upper-only directory moved onto a name the lowers
// hold is marked opaque so the lowers' entries there stay hidden. The old
// name gets a whiteout when the lowers still hold it.
func (d *node) rename(name string, nd *node, newName string, flags uint32) syscall.Errno {
	u := d.u
	// Only a directory's move changes other objects' paths, which needs
	// the move to run alone (moves.go); whether one moves is known once
	// the names are resolved, which needs a move begun.
	var dirs bool
	u.beginMove(false)
	errno := d.renameMoving(name, nd, newName, flags, false, &dirs)
	u.endMove(false)
	if !dirs {
		return errno
	}
	u.beginMove(true)
	defer u.endMove(true)
	return d.renameMoving(name, nd, newName, flags, true, &dirs)
}

// renameMoving is rename within a move begun. Where a directory is to
// move and the move is not one of directories (dirsMove false), it
// changes nothing and sets *dirs.
func (d *node) renameMoving(name string, nd *node, newName string, flags uint32, dirsMove bool, dirs *bool) syscall.Errno {
	u := d.u
	if u.readOnly || u.upper == nil {
		return syscall.EROFS
	}
	const known = unix.RENAME_NOREPLACE | unix.RENAME_EXCHANGE
	if flags&^known != 0 || flags == known {
		return syscall.EINVAL
	}
	exchange := flags&unix.RENAME_EXCHANGE != 0
	src, errno := u.resolve(d, name)
	if errno != 0 {
		return errno
	}
	dst, derr := u.resolve(nd, newName)
	if derr != 0 && derr != syscall.ENOENT {
		return derr
	}
	dstExists := derr == 0
	if flags&unix.RENAME_NOREPLACE != 0 && dstExists {
		return syscall.EEXIST
	}
	if exchange && !dstExists {
		return syscall.ENOENT
	}
	srcDir := src.st.Mode&unix.S_IFMT == unix.S_IFDIR
	if !dirsMove && (srcDir || dstExists && dst.st.Mode&unix.S_IFMT == unix.S_IFDIR) {
		*dirs = true
		return 0
	}
	sn := d.childNode(name, src)
	if srcDir || (exchange && dst.st.Mode&unix.S_IFMT == unix.S_IFDIR) {
		// Directories move: the paths redirects show change.
		defer u.forgetRedirects()
	}
	var dn *node
	if dstExists {
		dn = nd.childNode(newName, dst)
		if dn == sn {
			// Two names of one object: rename(2) does nothing.
			return 0
		}
		dstDir := dst.st.Mode&unix.S_IFMT == unix.S_IFDIR
		if !exchange {
			if srcDir && !dstDir {
				return syscall.ENOTDIR
			}
			if !srcDir && dstDir {
				return syscall.EISDIR
			}
			if dstDir {
				if errno := u.emptyForRmdir(dn); errno != 0 {
					return errno
				}
			}
		}
	}
	if errno := u.copyUpDir(d); errno != 0 {
		return errno
	}
	if errno := u.copyUpDir(nd); errno != 0 {
		return errno
	}
	if errno := u.copyUpName(d, name, sn); errno != 0 {
		return errno
	}
	if exchange {
		if errno := u.copyUpName(nd, newName, dn); errno != 0 {
			return errno
		}
	}
	srel, ok1 := d.upperRel()
	drel, ok2 := nd.upperRel()
	if !ok1 || !ok2 {
		return syscall.ENOENT
	}
	srel, drel = join(srel, name), join(drel, newName)
	srcLowerHas := u.lowerHas(d, name)
	dstLowerHas := u.lowerHas(nd, newName)
	if errno := u.markMovedDir(sn, srel, dstLowerHas); errno != 0 {
		return errno
	}
	if exchange {
		if errno := u.markMovedDir(dn, drel, srcLowerHas); errno != 0 {
			return errno
		}
		if err := unix.Renameat2(u.upper.fd, srel, u.upper.fd, drel, unix.RENAME_EXCHANGE); err != nil {
			return toErrno(err)
		}
		u.moveSpecialOwners(srel, drel, true) // ownertable.go
		d.dirChanged()
		nd.dirChanged()
		u.tree.move(sn, d, name, nd, newName)
		u.tree.move(dn, nd, newName, d, name)
		return 0
	}
	if dstExists && dst.upper && dst.st.Mode&unix.S_IFMT == unix.S_IFDIR {
		if err := u.clearUpperDir(drel); err != nil {
			return toErrno(err)
		}
		dn.keep(drel)
	}
	var dstSt unix.Stat_t
	if err := u.upper.lstat(drel, &dstSt); err == nil && isWhiteout(u.upper, drel, &dstSt, true) && srcDir {
		// A dir cannot replace a whiteout device by rename(2).
		if err := unix.Unlinkat(u.upper.fd, drel, 0); err != nil {
			return toErrno(err)
		}
	}
	if srcLowerHas {
		if errno := u.renameWhiteout(srel, drel); errno != 0 {
			return errno
		}
	} else if err := unix.Renameat(u.upper.fd, srel, u.upper.fd, drel); err != nil {
		return toErrno(err)
	}
	u.moveSpecialOwners(srel, drel, false) // ownertable.go
	// A .wh.NAME file at the destination no longer means anything but
	// would hide lowers if the new object goes away: drop it.
	ddir, dname := splitRel(drel)
	unix.Unlinkat(u.upper.fd, join(ddir, ".wh."+dname), 0)
	d.dirChanged()
	nd.dirChanged()
	if dn != nil {
		u.tree.removeName(dn, nd, newName, dst.st.Nlink <= 1 || dst.st.Mode&unix.S_IFMT == unix.S_IFDIR)
	}
	u.tree.move(sn, d, name, nd, newName)
	return 0
}

// renameWhiteout renames srel to drel in the upper and leaves a whiteout
// at srel, at once (RENAME_WHITEOUT) where the file system can. Else the
// whiteout is made first (in the work dir, or as a .wh. file, which the
// object hides until it goes), so that a failure changes nothing.
func (u *union) renameWhiteout(srel, drel string) syscall.Errno {
	err := unix.Renameat2(u.upper.fd, srel, u.upper.fd, drel, unix.RENAME_WHITEOUT)
	if err != unix.EINVAL && err != unix.EPERM {
		return toErrno(err)
	}
	tmp := u.tmpName()
	if err := unix.Mknodat(u.workFd, tmp, unix.S_IFCHR, 0); err != nil {
		tmp = ""
		if err := u.makeWhFile(srel); err != nil {
			return toErrno(err)
		}
	}
	if err := unix.Renameat(u.upper.fd, srel, u.upper.fd, drel); err != nil {
		if tmp != "" {
			unix.Unlinkat(u.workFd, tmp, 0)
		} else {
			u.dropWhFile(srel)
		}
		return toErrno(err)
	}
	if tmp != "" {
		if err := unix.Renameat2(u.workFd, tmp, u.upper.fd, srel, unix.RENAME_NOREPLACE); err != nil {
			// Renamed already: say so rather than fail a rename
			// that happened.
			unix.Unlinkat(u.workFd, tmp, 0)
			u.log.Warn("rename: no whiteout left at the old name; the lower object shows there again", "path", srel, "err", err)
		}
	}
	return 0
}

// markMovedDir prepares directory n (already in the upper at rel) to live
// under another name: a dir with lowers records where they are; an
// upper-only dir landing where lowers have entries becomes opaque.
func (u *union) markMovedDir(n *node, rel string, targetLowerHas bool) syscall.Errno {
	if !n.isDir {
		return 0
	}
	lowers := len(n.lowerDirs())
	lowerRel := n.dirLowerRel()
	path := u.upper.path(rel)
	if lowers > 0 {
		if _, ok := overlayXattr(path, redirectSuffix); !ok {
			if err := setOverlayXattr(path, u.ns, redirectSuffix, "/"+lowerRel); err != nil {
				return toErrno(err)
			}
		}
		return 0
	}
	if targetLowerHas {
		if err := u.setOpaque(path); err != nil {
			return toErrno(err)
		}
	}
	return 0
}
