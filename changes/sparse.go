package changes

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// fragment is one data region of a sparse file.
type fragment struct{ off, length int64 }

// dataFragments maps the data regions of a file with SEEK_DATA/SEEK_HOLE.
// It returns nil when the file has no holes or the filesystem cannot say.
func dataFragments(fd int, size int64) ([]fragment, error) {
	var frags []fragment
	var data int64
	for off := int64(0); off < size; {
		start, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole up to the end
		}
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		if start >= size {
			break
		}
		end, err := unix.Seek(fd, start, unix.SEEK_HOLE)
		if err != nil {
			return nil, err
		}
		end = min(end, size)
		frags = append(frags, fragment{start, end - start})
		data += end - start
		off = end
	}
	if _, err := unix.Seek(fd, 0, io.SeekStart); err != nil {
		return nil, err
	}
	if data == size {
		return nil, nil
	}
	// GNU tar ends the map at the file's size, so a trailing hole is kept
	// by readers that only extend a file to its last fragment.
	if len(frags) == 0 || frags[len(frags)-1].off+frags[len(frags)-1].length < size {
		frags = append(frags, fragment{size, 0})
	}
	return frags, nil
}

// sparse writes a GNU PAX 1.0 sparse entry by hand: archive/tar's Writer
// drops GNU.sparse.* records. The entry is a PAX extended header (the
// GNU.sparse records with the real name and size, plus whatever else the
// header needs in PAX), a ustar header named DIR/GNUSparseFile.0/BASE
// whose size covers the map and the data, the map (decimal lines: count,
// then offset and length of each fragment) padded to a block, and the
// data fragments, padded to a block.
func (lw *layerWriter) sparse(fd int, hdr *tar.Header, frags []fragment) error {
	if err := lw.tw.Flush(); err != nil {
		return fmt.Errorf("write %s: %w", hdr.Name, err)
	}
	var sparseMap bytes.Buffer
	sparseMap.WriteString(strconv.Itoa(len(frags)) + "\n")
	var data int64
	for _, f := range frags {
		fmt.Fprintf(&sparseMap, "%d\n%d\n", f.off, f.length)
		data += f.length
	}
	padTo(&sparseMap)
	archived := int64(sparseMap.Len()) + data

	recs := map[string]string{}
	for k, v := range hdr.PAXRecords {
		recs[k] = v
	}
	recs["GNU.sparse.major"] = "1"
	recs["GNU.sparse.minor"] = "0"
	recs["GNU.sparse.name"] = hdr.Name
	recs["GNU.sparse.realsize"] = strconv.FormatInt(hdr.Size, 10)
	if hdr.ModTime.Nanosecond() != 0 || !fitsOctal(hdr.ModTime.Unix(), 12) {
		recs["mtime"] = formatPAXTime(hdr.ModTime)
	}
	if !fitsOctal(int64(hdr.Uid), 8) {
		recs["uid"] = strconv.Itoa(hdr.Uid)
	}
	if !fitsOctal(int64(hdr.Gid), 8) {
		recs["gid"] = strconv.Itoa(hdr.Gid)
	}
	if !fitsOctal(archived, 12) {
		recs["size"] = strconv.FormatInt(archived, 10)
	}

	dir, base := path.Split(hdr.Name)
	var out bytes.Buffer
	paxData := paxRecords(recs)
	out.Write(ustarBlock(path.Join(dir, "PaxHeaders.0", base), tar.TypeXHeader, 0o644, 0, 0, int64(len(paxData)), epoch()))
	out.Write(paxData)
	padTo(&out)
	out.Write(ustarBlock(path.Join(dir, "GNUSparseFile.0", base), tar.TypeReg, hdr.Mode, hdr.Uid, hdr.Gid, archived, hdr.ModTime))
	out.Write(sparseMap.Bytes())
	if _, err := lw.w.Write(out.Bytes()); err != nil {
		return fmt.Errorf("write %s: %w", hdr.Name, err)
	}
	for _, f := range frags {
		for done := int64(0); done < f.length; {
			chunk := lw.buf[:min(int64(len(lw.buf)), f.length-done)]
			n, err := unix.Pread(fd, chunk, f.off+done)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return fmt.Errorf("read %s: %w", hdr.Name, err)
			}
			if n == 0 {
				return fmt.Errorf("%s: shrank while being read", hdr.Name)
			}
			if _, err := lw.w.Write(chunk[:n]); err != nil {
				return fmt.Errorf("write %s: %w", hdr.Name, err)
			}
			done += int64(n)
		}
	}
	if pad := (blockSize - data%blockSize) % blockSize; pad > 0 {
		if _, err := lw.w.Write(make([]byte, pad)); err != nil {
			return fmt.Errorf("write %s: %w", hdr.Name, err)
		}
	}
	return nil
}

const blockSize = 512

func padTo(b *bytes.Buffer) {
	if r := b.Len() % blockSize; r != 0 {
		b.Write(make([]byte, blockSize-r))
	}
}

// paxRecords formats PAX records in key order: "LEN KEY=VALUE\n", LEN
// counting itself.
func paxRecords(recs map[string]string) []byte {
	keys := make([]string, 0, len(recs))
	for k := range recs {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b bytes.Buffer
	for _, k := range keys {
		rest := len(k) + len(recs[k]) + 3 // ' ', '=', '\n'
		n := rest + len(strconv.Itoa(rest))
		if len(strconv.Itoa(n)) != len(strconv.Itoa(rest)) {
			n++
		}
		fmt.Fprintf(&b, "%d %s=%s\n", n, k, recs[k])
	}
	return b.Bytes()
}

// formatPAXTime is archive/tar's: seconds, then the nanoseconds without
// trailing zeros.
func formatPAXTime(ts time.Time) string {
	secs, nsecs := ts.Unix(), ts.Nanosecond()
	if nsecs == 0 {
		return strconv.FormatInt(secs, 10)
	}
	sign := ""
	if secs < 0 {
		sign = "-"
		secs = -(secs + 1)
		nsecs = -(nsecs - 1e9)
	}
	return strings.TrimRight(fmt.Sprintf("%s%d.%09d", sign, secs, nsecs), "0")
}

// fitsOctal reports whether v fits a ustar numeric field of width bytes
// (octal digits and a terminating NUL).
func fitsOctal(v int64, width int) bool {
	return v >= 0 && v < 1<<(3*(width-1))
}

// ustarBlock builds a POSIX ustar header block. Values that do not fit are
// written as 0: the PAX records before it carry them.
func ustarBlock(name string, typ byte, mode int64, uid, gid int, size int64, mtime time.Time) []byte {
	b := make([]byte, blockSize)
	if len(name) > 100 {
		name = name[:100]
	}
	copy(b[0:100], name)
	octal := func(field []byte, v int64) {
		if !fitsOctal(v, len(field)) {
			v = 0
		}
		s := strconv.FormatInt(v, 8)
		s = strings.Repeat("0", len(field)-1-len(s)) + s
		copy(field, s)
	}
	octal(b[100:108], mode)
	octal(b[108:116], int64(uid))
	octal(b[116:124], int64(gid))
	octal(b[124:136], size)
	octal(b[136:148], mtime.Unix())
	b[156] = typ
	copy(b[257:263], "ustar\x00")
	copy(b[263:265], "00")
	octal(b[329:337], 0)
	octal(b[337:345], 0)
	copy(b[148:156], "        ")
	var sum int64
	for _, c := range b {
		sum += int64(c)
	}
	copy(b[148:155], fmt.Sprintf("%06o\x00", sum))
	return b
}
