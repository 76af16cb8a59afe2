package doctor

import (
	"bufio"
	"fmt"
	"strconv"
	"strings"
)

// IDRange is one line of /proc/self/uid_map (or gid_map): IDs Inside..
// Inside+Count-1 in this namespace are Outside.. in the parent namespace.
type IDRange struct {
	Inside  uint32 `json:"inside"`
	Outside uint32 `json:"outside"`
	Count   uint32 `json:"count"`
}

// ParseIDMap parses the text of /proc/PID/uid_map or gid_map.
func ParseIDMap(text string) ([]IDRange, error) {
	var out []IDRange
	for i, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if len(f) != 3 {
			return nil, fmt.Errorf("id map line %d: want 3 fields, got %q", i+1, line)
		}
		var n [3]uint32
		for j, s := range f {
			v, err := strconv.ParseUint(s, 10, 32)
			if err != nil {
				return nil, fmt.Errorf("id map line %d: %w", i+1, err)
			}
			n[j] = uint32(v)
		}
		out = append(out, IDRange{Inside: n[0], Outside: n[1], Count: n[2]})
	}
	return out, nil
}

// IsInitialMap reports whether m is the initial user namespace's identity
// map of every ID.
func IsInitialMap(m []IDRange) bool {
	return len(m) == 1 && m[0] == IDRange{Inside: 0, Outside: 0, Count: 4294967295}
}

// ToHost maps id through m from this namespace to the parent one.
func ToHost(m []IDRange, id uint32) (uint32, bool) {
	for _, r := range m {
		if id >= r.Inside && uint64(id) < uint64(r.Inside)+uint64(r.Count) {
			return r.Outside + (id - r.Inside), true
		}
	}
	return 0, false
}

// SubIDRange is one range of /etc/subuid or /etc/subgid granted to a user.
type SubIDRange struct {
	Start uint32 `json:"start"`
	Count uint32 `json:"count"`
}

// ParseSubIDs returns the ranges /etc/subuid (or /etc/subgid) text grants
// to the user named name or with numeric id id: shadow-utils accepts
// either form in the first field. Malformed lines are skipped, as
// newuidmap does.
func ParseSubIDs(text, name string, id uint32) []SubIDRange {
	var out []SubIDRange
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Split(line, ":")
		if len(f) != 3 {
			continue
		}
		if f[0] != name && f[0] != strconv.FormatUint(uint64(id), 10) {
			continue
		}
		start, err1 := strconv.ParseUint(f[1], 10, 32)
		count, err2 := strconv.ParseUint(f[2], 10, 32)
		if err1 != nil || err2 != nil || count == 0 {
			continue
		}
		out = append(out, SubIDRange{Start: uint32(start), Count: uint32(count)})
	}
	return out
}

// FuseConfAllowsOther reports whether /etc/fuse.conf text enables
// user_allow_other: the option alone on a line, comments ignored.
func FuseConfAllowsOther(text string) bool {
	for _, line := range strings.Split(text, "\n") {
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		if strings.TrimSpace(line) == "user_allow_other" {
			return true
		}
	}
	return false
}

// KernelVersion parses the major and minor number of a kernel release
// string such as "6.9.0-rc1" or "5.15.0-91-generic".
func KernelVersion(release string) (major, minor int, err error) {
	parts := strings.SplitN(release, ".", 3)
	if len(parts) < 2 {
		return 0, 0, fmt.Errorf("kernel release %q: want MAJOR.MINOR", release)
	}
	major, err = strconv.Atoi(parts[0])
	if err != nil {
		return 0, 0, fmt.Errorf("kernel release %q: %w", release, err)
	}
	digits := parts[1]
	if i := strings.IndexFunc(digits, func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
		digits = digits[:i]
	}
	minor, err = strconv.Atoi(digits)
	if err != nil {
		return 0, 0, fmt.Errorf("kernel release %q: %w", release, err)
	}
	return major, minor, nil
}

// AtLeast reports whether major.minor is at least wantMajor.wantMinor.
func AtLeast(major, minor, wantMajor, wantMinor int) bool {
	return major > wantMajor || major == wantMajor && minor >= wantMinor
}

// capSysAdmin is CAP_SYS_ADMIN's bit number.
const capSysAdmin = 21

// ProcStatus is what /proc/self/status says about privileges.
type ProcStatus struct {
	CapEff, CapBnd uint64
	NoNewPrivs     bool
}

// SysAdmin reports whether caps holds CAP_SYS_ADMIN.
func SysAdmin(caps uint64) bool { return caps&(1<<capSysAdmin) != 0 }

// ParseProcStatus reads the capability sets and the no_new_privs flag
// from the text of /proc/PID/status.
func ParseProcStatus(text string) (ProcStatus, error) {
	var ps ProcStatus
	seen := 0
	for _, line := range strings.Split(text, "\n") {
		key, val, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		val = strings.TrimSpace(val)
		var err error
		switch key {
		case "CapEff":
			ps.CapEff, err = strconv.ParseUint(val, 16, 64)
			seen++
		case "CapBnd":
			ps.CapBnd, err = strconv.ParseUint(val, 16, 64)
			seen++
		case "NoNewPrivs":
			ps.NoNewPrivs = val == "1"
		}
		if err != nil {
			return ProcStatus{}, fmt.Errorf("%s: %w", key, err)
		}
	}
	if seen != 2 {
		return ProcStatus{}, fmt.Errorf("no CapEff and CapBnd lines")
	}
	return ps, nil
}
