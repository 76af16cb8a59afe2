package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/doctor"
)

// checkAllowOther refuses --allow-other (allow_other) up front where
// fusermount3 would: a plain user may share a FUSE mount only when
// /etc/fuse.conf says user_allow_other. Root, and root of a user namespace
// (which mounts FUSE itself), need nothing.
func checkAllowOther() error {
	if os.Geteuid() == 0 {
		return nil
	}
	if data, err := os.ReadFile("/etc/fuse.conf"); err == nil && doctor.FuseConfAllowsOther(string(data)) {
		return nil
	}
	return errors.New("allow other users: fusermount3 lets a plain user share a mount only when /etc/fuse.conf holds the line user_allow_other; add it as root, or leave the view yours alone (without --allow-other)")
}

// explain adds what a user can do about an error whose cause is the
// environment rather than the command.
func explain(err error) error {
	if errors.Is(err, unix.EOPNOTSUPP) && strings.Contains(err.Error(), "xattr") ||
		errors.Is(err, unix.EOPNOTSUPP) && strings.Contains(err.Error(), "override_stat") {
		return fmt.Errorf("%w\n  because: the filesystem under the store does not support extended attributes; "+
			"a store keeps opaque directories in them, and a rootless store also the owners and modes a plain user cannot set "+
			"(user.containers.override_stat): put the store on ext4, xfs, btrfs or tmpfs (Linux >= 6.6) with --store or LAYERFS_STORE "+
			"(layerfs doctor checks it)", err)
	}
	return err
}
