package doctor

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestParseIDMap(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		want       []IDRange
		initial    bool
		wantErr    bool
	}{
		{"initial", "         0          0 4294967295\n", []IDRange{{0, 0, 4294967295}}, true, false},
		{"unshare -Ur", "         0       1000          1\n", []IDRange{{0, 1000, 1}}, false, false},
		{"subordinate range", "0 1000 1\n1 100000 65536\n", []IDRange{{0, 1000, 1}, {1, 100000, 65536}}, false, false},
		{"not yet written", "", nil, false, false},
		{"two fields", "0 1000\n", nil, false, true},
		{"not a number", "0 x 1\n", nil, false, true},
		{"negative", "0 -1 1\n", nil, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseIDMap(tc.text)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err %v, want error %v", err, tc.wantErr)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
			if IsInitialMap(got) != tc.initial {
				t.Fatalf("IsInitialMap = %v, want %v", !tc.initial, tc.initial)
			}
		})
	}
}

func TestToHost(t *testing.T) {
	m := []IDRange{{0, 1000, 1}, {1, 100000, 65536}}
	for _, tc := range []struct {
		id, want uint32
		ok       bool
	}{{0, 1000, true}, {1, 100000, true}, {65536, 165535, true}, {65537, 0, false}} {
		got, ok := ToHost(m, tc.id)
		if got != tc.want || ok != tc.ok {
			t.Errorf("ToHost(%d) = %d, %v; want %d, %v", tc.id, got, ok, tc.want, tc.ok)
		}
	}
}

func TestParseSubIDs(t *testing.T) {
	const text = `# comment
alice:100000:65536
bob:165536:65536
1002:231072:65536
alice:300000:1000
broken line
carol:x:10
dave:400000:0
`
	for _, tc := range []struct {
		name string
		id   uint32
		want []SubIDRange
	}{
		{"alice", 1000, []SubIDRange{{100000, 65536}, {300000, 1000}}},
		{"bob", 1001, []SubIDRange{{165536, 65536}}},
		{"erin", 1002, []SubIDRange{{231072, 65536}}}, // by number
		{"carol", 1003, nil},                          // malformed
		{"dave", 1004, nil},                           // empty range
		{"nobody", 65534, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := ParseSubIDs(text, tc.name, tc.id); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestFuseConfAllowsOther(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		want       bool
	}{
		{"debian default", "# user_allow_other - Using ...\n#user_allow_other\n#mount_max = 1000\n", false},
		{"enabled", "#mount_max = 1000\nuser_allow_other\n", true},
		{"indented with comment", "  user_allow_other   # share views\n", true},
		{"part of a word", "user_allow_other_not\n", false},
		{"empty", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := FuseConfAllowsOther(tc.text); got != tc.want {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestKernelVersion(t *testing.T) {
	for _, tc := range []struct {
		release      string
		major, minor int
		wantErr      bool
		atLeast69    bool
	}{
		{"6.18.44-fc-v782", 6, 18, false, true},
		{"6.9.0-rc1", 6, 9, false, true},
		{"6.8.12", 6, 8, false, false},
		{"5.15.0-91-generic", 5, 15, false, false},
		{"7.0", 7, 0, false, true},
		{"6.10+deb13", 6, 10, false, true},
		{"linux", 0, 0, true, false},
		{"x.1", 0, 0, true, false},
	} {
		t.Run(tc.release, func(t *testing.T) {
			maj, min, err := KernelVersion(tc.release)
			if (err != nil) != tc.wantErr || maj != tc.major || min != tc.minor {
				t.Fatalf("got %d.%d %v, want %d.%d error %v", maj, min, err, tc.major, tc.minor, tc.wantErr)
			}
			if err == nil && AtLeast(maj, min, 6, 9) != tc.atLeast69 {
				t.Fatalf("AtLeast 6.9 = %v", !tc.atLeast69)
			}
		})
	}
}

// facts for the three environments the project cares about.
func rootFacts() Facts {
	return Facts{EUID: 0, UserName: "root", UIDMap: []IDRange{{0, 0, 4294967295}}, InitialNamespace: true, SysAdmin: true, BoundingSysAdmin: true,
		Store:  StoreFacts{Path: "/var/lib/layerfs", Namespace: "trusted", Writable: true, UserXattr: true, TrustedXattrTried: true, TrustedXattr: true, Filesystem: "ext4"},
		Kernel: KernelFacts{Release: "6.18.1", OverlayOK: true},
		Fuse:   FuseFacts{DevFuse: true, Fusermount: "/usr/bin/fusermount3", FusermountSetuid: true}}
}

func userFacts() Facts {
	return Facts{EUID: 1000, UID: 1000, UserName: "alice", HostUID: 1000, HostUser: "alice", UIDMap: []IDRange{{0, 0, 4294967295}}, InitialNamespace: true, BoundingSysAdmin: true,
		Store:  StoreFacts{Path: "/home/alice/.local/share/layerfs", Namespace: "user", Writable: true, UserXattr: true, Filesystem: "ext4"},
		Kernel: KernelFacts{Release: "6.18.1", OverlayUserXattr: true, OverlayReason: "kernel overlay: operation not permitted"},
		Fuse:   FuseFacts{DevFuse: true, Fusermount: "/usr/bin/fusermount3", FusermountSetuid: true},
		SubIDs: SubIDFacts{SubUID: []SubIDRange{{100000, 65536}}, SubGID: []SubIDRange{{100000, 65536}}, NewUIDMap: "/usr/bin/newuidmap", NewGIDMap: "/usr/bin/newgidmap", NewUIDMapPrivileged: true, NewGIDMapPrivileged: true}}
}

func unshareFacts() Facts {
	f := userFacts()
	f.EUID, f.UID, f.UserName = 0, 0, "root"
	f.UIDMap, f.InitialNamespace, f.SysAdmin = []IDRange{{0, 1000, 1}}, false, true
	f.Kernel = KernelFacts{Release: "6.18.1", OverlayOK: true, OverlayUserXattr: true}
	return f
}

func lineOf(r Report, topic string, status Status) bool {
	for _, l := range r.Lines {
		if l.Topic == topic && l.Status == status {
			return true
		}
	}
	return false
}

func TestAssess(t *testing.T) {
	for _, tc := range []struct {
		name        string
		facts       func() Facts
		driver      string
		fuseMount   string
		verdictHas  []string
		wantStatus  map[string]Status
		wantFailure bool
	}{
		{name: "root", facts: rootFacts, driver: "kernel", fuseMount: "direct",
			verdictHas: []string{"will use: kernel"}, wantStatus: map[string]Status{"identity": OK, "passthrough": OK, "fusermount3": Info}},
		{name: "plain user", facts: userFacts, driver: "fuse", fuseMount: "fusermount3",
			verdictHas: []string{"will use: fuse", "fusermount3"}, wantStatus: map[string]Status{"kernel": Warn, "fusermount3": OK, "passthrough": Info, "subids": OK}},
		{name: "unshare -Urm", facts: unshareFacts, driver: "kernel", fuseMount: "direct",
			verdictHas: []string{"will use: kernel", "userxattr"}, wantStatus: map[string]Status{"identity": Warn, "kernel": OK}},
		{name: "plain user without fusermount3", facts: func() Facts {
			f := userFacts()
			f.Fuse.Fusermount, f.Fuse.FusermountSetuid = "", false
			return f
		}, driver: "", verdictHas: []string{"mount will fail", "no setuid fusermount3"}, wantStatus: map[string]Status{"fusermount3": Fail}, wantFailure: true},
		{name: "plain user, /dev/fuse closed", facts: func() Facts {
			f := userFacts()
			f.Fuse.DevFuse, f.Fuse.DevFuseErr = false, "permission denied"
			return f
		}, driver: "", verdictHas: []string{"/dev/fuse is not usable"}, wantStatus: map[string]Status{"fuse": Fail}, wantFailure: true},
		{name: "plain user, fusermount3 not setuid", facts: func() Facts {
			f := userFacts()
			f.Fuse.FusermountSetuid = false
			return f
		}, driver: "", wantStatus: map[string]Status{"fusermount3": Fail}, wantFailure: true},
		{name: "unshare without /dev/fuse still has the kernel", facts: func() Facts {
			f := unshareFacts()
			f.Fuse.DevFuse = false
			return f
		}, driver: "kernel", verdictHas: []string{"will use: kernel"}, wantStatus: map[string]Status{"fuse": Warn}},
		{name: "rootless store without user xattrs", facts: func() Facts {
			f := userFacts()
			f.Store.UserXattr, f.Store.UserXattrErr, f.Store.Filesystem = false, "operation not supported", "nfs"
			return f
		}, driver: "fuse", wantStatus: map[string]Status{"xattrs": Fail}, wantFailure: true},
		{name: "store not writable", facts: func() Facts {
			f := userFacts()
			f.Store.Writable, f.Store.WritableErr = false, "permission denied"
			return f
		}, driver: "fuse", wantStatus: map[string]Status{"store": Fail}, wantFailure: true},
		{name: "old kernel: no passthrough", facts: func() Facts {
			f := rootFacts()
			f.Kernel.Release = "6.8.0"
			return f
		}, driver: "kernel", wantStatus: map[string]Status{"passthrough": Info}},
		{name: "no subordinate ranges", facts: func() Facts {
			f := userFacts()
			f.SubIDs.SubUID = nil
			return f
		}, driver: "fuse", wantStatus: map[string]Status{"subids": Warn}},
		{name: "root in a container without CAP_SYS_ADMIN", facts: func() Facts {
			f := rootFacts()
			f.SysAdmin, f.BoundingSysAdmin = false, false
			f.Kernel.OverlayOK, f.Kernel.OverlayReason = false, "operation not permitted"
			f.Store.TrustedXattr, f.Store.TrustedXattrErr = false, "operation not permitted"
			return f
		}, driver: "", verdictHas: []string{"no CAP_SYS_ADMIN"}, wantStatus: map[string]Status{"identity": Warn, "fusermount3": Fail, "xattrs": Fail}, wantFailure: true},
		{name: "root in a container with CAP_SYS_ADMIN, overlay refused", facts: func() Facts {
			f := rootFacts()
			f.Kernel.OverlayOK, f.Kernel.OverlayReason = false, "upper on overlayfs"
			return f
		}, driver: "fuse", fuseMount: "direct", verdictHas: []string{"directly"}},
		{name: "plain user under no_new_privs", facts: func() Facts {
			f := userFacts()
			f.NoNewPrivs = true
			return f
		}, driver: "", verdictHas: []string{"no_new_privs"}, wantStatus: map[string]Status{"fusermount3": Fail}, wantFailure: true},
		{name: "plain user in a container without CAP_SYS_ADMIN", facts: func() Facts {
			f := userFacts()
			f.BoundingSysAdmin = false
			return f
		}, driver: "", verdictHas: []string{"no CAP_SYS_ADMIN"}, wantStatus: map[string]Status{"fusermount3": Fail}, wantFailure: true},
		{name: "user allow_other", facts: func() Facts {
			f := userFacts()
			f.Fuse.AllowOther = true
			return f
		}, driver: "fuse", wantStatus: map[string]Status{"allow_other": OK}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := Assess(tc.facts())
			if r.Driver != tc.driver {
				t.Fatalf("driver %q, want %q (%s)", r.Driver, tc.driver, r.DriverReason)
			}
			if tc.fuseMount != "" && r.FuseMount != tc.fuseMount {
				t.Fatalf("fuse mount %q, want %q", r.FuseMount, tc.fuseMount)
			}
			for _, want := range tc.verdictHas {
				if !strings.Contains(r.Verdict(), want) {
					t.Fatalf("verdict %q lacks %q", r.Verdict(), want)
				}
			}
			for topic, st := range tc.wantStatus {
				if !lineOf(r, topic, st) {
					t.Fatalf("no %s line for %s in %+v", st, topic, r.Lines)
				}
			}
			if r.Failed() != tc.wantFailure {
				t.Fatalf("Failed() = %v, want %v", r.Failed(), tc.wantFailure)
			}
			for _, l := range r.Lines {
				if (l.Status == Fail || l.Status == Warn) && l.Hint == "" {
					t.Errorf("%s %s has no hint: %s", l.Status, l.Topic, l.Text)
				}
			}
			var buf bytes.Buffer
			if err := Render(&buf, r); err != nil || !strings.HasSuffix(buf.String(), r.Verdict()+"\n") {
				t.Fatalf("Render: %v\n%s", err, buf.String())
			}
		})
	}
}

// TestGatherStore runs the store checks on a real temp dir: a store that
// does not exist yet is examined in its nearest existing parent, and the
// check leaves nothing behind.
func TestGatherStore(t *testing.T) {
	dir := t.TempDir()
	store := filepath.Join(dir, "a", "b", "store")
	s := gatherStore(store, false)
	if s.Exists || s.TestedIn != dir || !s.Writable || s.Namespace != "user" {
		t.Fatalf("gatherStore of a missing store: %+v", s)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("the check left %v behind", ents)
	}
	if err := os.MkdirAll(filepath.Join(store, "tmp"), 0o700); err != nil {
		t.Fatal(err)
	}
	cfg, _ := json.Marshal(map[string]any{"version": 1, "xattrNamespace": "trusted"})
	if err := os.WriteFile(filepath.Join(store, "store.json"), cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	s = gatherStore(store, false)
	if !s.Exists || s.TestedIn != filepath.Join(store, "tmp") || s.Namespace != "trusted" {
		t.Fatalf("gatherStore of an existing store: %+v", s)
	}
}

func TestGatherRuns(t *testing.T) {
	f := Gather(context.Background(), Options{Store: filepath.Join(t.TempDir(), "store")})
	if len(f.UIDMap) == 0 || f.Kernel.Release == "" || !f.Store.Writable {
		t.Fatalf("Gather found too little: %+v", f)
	}
	if f.EUID != os.Geteuid() {
		t.Fatalf("euid %d, want %d", f.EUID, os.Geteuid())
	}
}

func TestParseProcStatus(t *testing.T) {
	for _, tc := range []struct {
		name, text          string
		sysAdmin, bndAdmin  bool
		noNewPrivs, wantErr bool
	}{
		{"root", "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\nNoNewPrivs:\t0\n", true, true, false, false},
		{"plain user", "CapEff:\t0000000000000000\nCapBnd:\t000001ffffffffff\nNoNewPrivs:\t0\n", false, true, false, false},
		{"docker default", "CapEff:\t00000000a80425fb\nCapBnd:\t00000000a80425fb\nNoNewPrivs:\t0\n", false, false, false, false},
		{"docker --cap-add SYS_ADMIN", "CapEff:\t00000000a82425fb\nCapBnd:\t00000000a82425fb\nNoNewPrivs:\t1\n", true, true, true, false},
		{"no capability lines", "Name:\tx\n", false, false, false, true},
		{"garbage", "CapEff:\tzz\nCapBnd:\t0\n", false, false, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ps, err := ParseProcStatus(tc.text)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err %v, want error %v", err, tc.wantErr)
			}
			if err != nil {
				return
			}
			if SysAdmin(ps.CapEff) != tc.sysAdmin || SysAdmin(ps.CapBnd) != tc.bndAdmin || ps.NoNewPrivs != tc.noNewPrivs {
				t.Fatalf("got %+v", ps)
			}
		})
	}
}

func TestFuseBlockers(t *testing.T) {
	for _, tc := range []struct {
		name     string
		facts    func() Facts
		writable bool
		sticky   bool     // a sticky mount point another user owns
		want     []string // substrings, one per blocker, in order
	}{
		{"plain user, all fine", userFacts, true, false, nil},
		{"root, all fine, target not writable", rootFacts, false, false, nil},
		{"plain user, /dev/fuse closed", func() Facts {
			f := userFacts()
			f.Fuse.DevFuse, f.Fuse.DevFuseErr = false, "permission denied"
			return f
		}, true, false, []string{"chmod 0666 /dev/fuse"}},
		{"plain user, no fusermount3, foreign target", func() Facts {
			f := userFacts()
			f.Fuse.Fusermount = ""
			return f
		}, false, false, []string{"install fuse3", "cannot write to the mount point /mnt/x"}},
		{"plain user, no_new_privs", func() Facts {
			f := userFacts()
			f.NoNewPrivs = true
			return f
		}, true, false, []string{"no_new_privs"}},
		{"root without CAP_SYS_ADMIN", func() Facts {
			f := rootFacts()
			f.SysAdmin, f.BoundingSysAdmin = false, false
			return f
		}, true, false, []string{"--cap-add SYS_ADMIN"}},
		{"plain user, sticky mount point of another user", userFacts, true, true, []string{"not owned by you"}},
		{"root, sticky mount point of another user", rootFacts, true, true, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := fuseBlockers(tc.facts(), "/mnt/x", mountPoint{writable: tc.writable, stickyNotOwned: tc.sticky})
			if len(got) != len(tc.want) {
				t.Fatalf("got %q, want %d blockers like %q", got, len(tc.want), tc.want)
			}
			for i, w := range tc.want {
				if !strings.Contains(got[i], w) {
					t.Fatalf("blocker %d %q lacks %q", i, got[i], w)
				}
			}
		})
	}
}
