package main

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

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
