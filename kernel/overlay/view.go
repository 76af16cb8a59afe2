package overlay

import (
	"errors"

	"golang.org/x/sys/unix"
)

// ViewOptions are the options layerfs mounts a writable view with:
// redirect_dir=on, so renaming a lower directory works instead of failing
// with EXDEV, and index=on, so a lower hardlink group stays one inode when
// one of its names is written, with nfs_export=off, which index=on would
// otherwise take from the overlay module's default (it indexes every
// copy-up and excludes other features). With userXattr (inside a user
// namespace, or for a store whose markers are user.* xattrs) the kernel
// refuses redirect_dir=on and turns index off; the mount then goes without
// them and its Result says so. A view without upper (read-only) gets no
// index either: nothing is copied up.
func ViewOptions(lowers []string, upper, work string, userXattr bool) Options {
	o := Options{
		Lowers:      lowers,
		Upper:       upper,
		Work:        work,
		UserXattr:   userXattr,
		RedirectDir: !userXattr,
		Index:       !userXattr && upper != "",
	}
	if o.Index {
		o.ExtraOptions = []string{"nfs_export=off"}
	}
	return o
}

// MountView mounts opts as Mount does, and where index=on makes the kernel
// refuse the upper mounts it again without the index, listing index=on in
// Result.Dropped. The kernel refuses with ESTALE when the upper was indexed
// against other inodes than the lowers and upper have now: index=on records
// the lower root and the upper root at its first mount and checks them at
// every mount after, so an upper stacked on other lowers, or a store
// copied elsewhere (new inode numbers), is refused. Without the index the
// kernel does not check; hardlinks of lower files then break on copy-up.
func MountView(target string, opts Options) (*Result, error) {
	res, err := Mount(target, opts)
	if err == nil || !opts.Index || !errors.Is(err, unix.ESTALE) {
		return res, err
	}
	opts.Index = false
	var extra []string
	for _, o := range opts.ExtraOptions {
		if o != "nfs_export=off" {
			extra = append(extra, o)
		}
	}
	opts.ExtraOptions = extra
	res, err = Mount(target, opts)
	if err != nil {
		return nil, err
	}
	res.Dropped = append(res.Dropped, Degradation{Feature: "index=on",
		Reason: "the kernel refused this upper with index=on (stale file handles: it was indexed against other lowers or inodes, e.g. before the store was copied); hardlinks of lower files break on copy-up"})
	return res, nil
}
