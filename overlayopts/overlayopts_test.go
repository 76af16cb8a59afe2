package overlayopts

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/layerfs/layerfs/fusefs"
)

func TestParse(t *testing.T) {
	zero := uint32(0)
	u1000 := uint32(1000)
	for _, tc := range []struct {
		name    string
		args    []string
		check   func(t *testing.T, c *Command)
		wantErr string
	}{
		{name: "fuse-overlayfs form", args: []string{"-o", "lowerdir=/l1:/l2,upperdir=/u,workdir=/w", "/mnt"},
			check: func(t *testing.T, c *Command) {
				want := fusefs.Options{Lowers: []string{"/l1", "/l2"}, Upper: "/u", Work: "/w"}
				if !reflect.DeepEqual(c.Options, want) || c.Mountpoint != "/mnt" || c.Foreground {
					t.Fatalf("got %+v", c)
				}
			}},
		{name: "mount.fuse3 form", args: []string{"overlay", "/mnt", "-o", "rw,nodev,nosuid,lowerdir=/l,upperdir=/u,workdir=/w"},
			check: func(t *testing.T, c *Command) {
				if c.Source != "overlay" || c.Mountpoint != "/mnt" || c.Options.FsName != "overlay" {
					t.Fatalf("got %+v", c)
				}
				if !reflect.DeepEqual(c.Options.ExtraMountOptions, []string{"nodev", "nosuid"}) {
					t.Fatalf("extra options %v", c.Options.ExtraMountOptions)
				}
			}},
		{name: "escapes", args: []string{`-olowerdir=/a\:b:/c\,d,upperdir=/u\,x,workdir=/w`, "/m"},
			check: func(t *testing.T, c *Command) {
				if !reflect.DeepEqual(c.Options.Lowers, []string{"/a:b", "/c,d"}) || c.Options.Upper != "/u,x" {
					t.Fatalf("lowers %q upper %q", c.Options.Lowers, c.Options.Upper)
				}
			}},
		{name: "read-only without upper", args: []string{"-o", "lowerdir=/l", "-o", "ro", "/m"},
			check: func(t *testing.T, c *Command) {
				if !c.Options.ReadOnly || c.Options.Upper != "" {
					t.Fatalf("got %+v", c.Options)
				}
			}},
		{name: "mappings and squash", args: []string{"-o", "lowerdir=/l,uidmapping=0:1000:1:1:100000:65536,gidmapping=0:1000:1,squash_to_uid=1000,squash_to_gid=0", "/m"},
			check: func(t *testing.T, c *Command) {
				wantU := []fusefs.IDMap{{ContainerID: 0, HostID: 1000, Size: 1}, {ContainerID: 1, HostID: 100000, Size: 65536}}
				if !reflect.DeepEqual(c.Options.UIDMap, wantU) || len(c.Options.GIDMap) != 1 {
					t.Fatalf("maps %v %v", c.Options.UIDMap, c.Options.GIDMap)
				}
				if *c.Options.SquashUID != u1000 || *c.Options.SquashGID != zero {
					t.Fatal("squash ids")
				}
			}},
		{name: "squash_to_root", args: []string{"-o", "lowerdir=/l,squash_to_root", "/m"},
			check: func(t *testing.T, c *Command) {
				if *c.Options.SquashUID != 0 || *c.Options.SquashGID != 0 {
					t.Fatal("squash_to_root")
				}
			}},
		{name: "fsync timeout noxattrs debug", args: []string{"-f", "-o", "lowerdir=/l,fsync=0,timeout=2.5,noxattrs=1,xattr_permissions=2,redirect_dir=on,fast_ino=1,allow_other", "/m"},
			check: func(t *testing.T, c *Command) {
				if !c.Volatile || !c.NoXattrs || c.Options.Timeout != 2500*time.Millisecond || !c.Foreground || !c.Options.AllowOther {
					t.Fatalf("got %+v", c)
				}
				if !reflect.DeepEqual(c.Ignored, []string{"fast_ino"}) {
					t.Fatalf("ignored %v", c.Ignored)
				}
			}},
		{name: "volatile and kernel driver", args: []string{"-o", "lowerdir=/l,volatile,driver=kernel", "/m"},
			check: func(t *testing.T, c *Command) {
				if !c.Volatile || c.Driver != DriverKernel {
					t.Fatalf("got %+v", c)
				}
			}},
		{name: "passthrough off", args: []string{"-o", "lowerdir=/l,passthrough=0", "/m"},
			check: func(t *testing.T, c *Command) {
				if !c.Options.NoPassthrough {
					t.Fatalf("got %+v", c)
				}
			}},
		{name: "passthrough on by default", args: []string{"-o", "lowerdir=/l", "/m"},
			check: func(t *testing.T, c *Command) {
				if c.Options.NoPassthrough {
					t.Fatalf("got %+v", c)
				}
			}},
		{name: "passthrough bad value", args: []string{"-o", "lowerdir=/l,passthrough=maybe", "/m"}, wantErr: "passthrough=maybe"},
		{name: "unknown option", args: []string{"-o", "lowerdir=/l,frobnicate", "/m"}, wantErr: `unknown option "frobnicate"`},
		{name: "no lowerdir", args: []string{"-o", "upperdir=/u,workdir=/w", "/m"}, wantErr: "no lowerdir"},
		{name: "upper without work", args: []string{"-o", "lowerdir=/l,upperdir=/u", "/m"}, wantErr: "together"},
		{name: "bad mapping", args: []string{"-o", "lowerdir=/l,uidmapping=0:1", "/m"}, wantErr: "uidmapping"},
		{name: "empty lower", args: []string{"-o", "lowerdir=/l::/k", "/m"}, wantErr: "empty entry"},
		{name: "no mountpoint", args: []string{"-o", "lowerdir=/l"}, wantErr: "MOUNTPOINT"},
		{name: "bad flag", args: []string{"-x", "/m"}, wantErr: `unknown flag "-x"`},
		{name: "bad driver", args: []string{"-o", "lowerdir=/l,driver=zfs", "/m"}, wantErr: "want fuse, kernel or auto"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse(tc.args)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Parse(%q) = %v, want error containing %q", tc.args, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tc.args, err)
			}
			tc.check(t, c)
		})
	}
}
