package layertar

import (
	"archive/tar"
	"encoding/binary"
	"time"
)

// parseHeader reads the plain headers that make up most layers, a
// ustar or GNU header of a regular file, directory, symlink or hardlink
// with clean octal fields and nothing around it, into exactly the Header
// archive/tar makes of them, several times faster: archive/tar's
// readHeader costs more than the rest of a small file's import outside
// the kernel. It answers false for anything else (extension headers,
// sparse files, base-256 numbers, a bad checksum, the end of the
// archive...), which archive/tar then reads. FuzzParseHeader holds it to
// archive/tar.
func parseHeader(b *[blockSize]byte) (*tar.Header, bool) {
	typ := b[156]
	switch typ {
	case tar.TypeReg, tar.TypeDir, tar.TypeSymlink, tar.TypeLink:
	default:
		return nil, false
	}
	sum, ok := octal(b[148:156])
	if !ok {
		return nil, false
	}
	if got, ascii := checksumASCII(b); !ascii || got != sum {
		return nil, false
	}
	var format tar.Format
	switch {
	case string(b[257:263]) == "ustar\x00" && string(b[508:512]) != "tar\x00":
		format = tar.FormatUSTAR
	case string(b[257:265]) == "ustar  \x00":
		format = tar.FormatGNU
		// Access and change times, which archive/tar would parse.
		if b[345] != 0 || b[357] != 0 {
			return nil, false
		}
	default:
		return nil, false
	}
	mode, ok1 := octal(b[100:108])
	uid, ok2 := octal(b[108:116])
	gid, ok3 := octal(b[116:124])
	size, ok4 := octal(b[124:136])
	mtime, ok5 := octal(b[136:148])
	devmajor, ok6 := octal(b[329:337])
	devminor, ok7 := octal(b[337:345])
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6 && ok7) {
		return nil, false
	}
	hdr := &tar.Header{
		Typeflag: typ,
		Name:     cString(b[0:100]),
		Linkname: cString(b[157:257]),
		Size:     size,
		Mode:     mode,
		Uid:      int(uid),
		Gid:      int(gid),
		Uname:    cString(b[265:297]),
		Gname:    cString(b[297:329]),
		ModTime:  time.Unix(mtime, 0),
		Devmajor: devmajor,
		Devminor: devminor,
		Format:   format,
	}
	if format == tar.FormatUSTAR {
		if prefix := cString(b[345:500]); prefix != "" {
			hdr.Name = prefix + "/" + hdr.Name
		}
		// archive/tar's own test of a strict ustar header: numeric
		// fields end in NUL.
		for _, end := range [...]int{136, 108, 116, 124, 148, 337, 345} {
			if b[end-1] != 0 {
				hdr.Format = tar.FormatUnknown
				break
			}
		}
	}
	return hdr, true
}

// contentSize is how many bytes of content follow a header parseHeader
// accepted.
func contentSize(hdr *tar.Header) int64 {
	if hdr.Typeflag == tar.TypeReg {
		return hdr.Size
	}
	return 0
}

// octal reads a numeric field as archive/tar does when it holds octal
// digits, padded with spaces or NULs; anything else answers false.
func octal(f []byte) (int64, bool) {
	i, j := 0, len(f)
	for i < j && (f[i] == ' ' || f[i] == 0) {
		i++
	}
	for j > i && (f[j-1] == ' ' || f[j-1] == 0) {
		j--
	}
	var v int64
	for _, c := range f[i:j] {
		if c == 0 {
			break // archive/tar reads up to the first NUL
		}
		if c < '0' || c > '7' {
			return 0, false
		}
		v = v<<3 | int64(c-'0')
	}
	return v, true
}

// checksum is the unsigned sum of the block with the checksum field read
// as spaces.
func checksum(b *[blockSize]byte) int64 {
	sum, _ := checksumASCII(b)
	return sum
}

// checksumASCII is checksum, and whether every byte of the block is
// ASCII, eight bytes at a time.
func checksumASCII(b *[blockSize]byte) (int64, bool) {
	const lanes = 0x00ff00ff00ff00ff
	var sum, high uint64
	for i := 0; i < blockSize; i += 8 {
		w := binary.LittleEndian.Uint64(b[i:])
		high |= w
		// Four 16-bit lanes of byte pairs, which cannot overflow in a
		// block: 64 words add at most 64*510 to each.
		sum += w&lanes + w>>8&lanes
	}
	total := sum&0xffff + sum>>16&0xffff + sum>>32&0xffff + sum>>48
	for _, c := range b[148:156] {
		total -= uint64(c)
	}
	total += 8 * ' '
	return int64(total), high&0x8080808080808080 == 0
}

// cString is a NUL-terminated field.
func cString(f []byte) string {
	for i, c := range f {
		if c == 0 {
			return string(f[:i])
		}
	}
	return string(f)
}
