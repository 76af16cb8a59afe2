package layertar

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
)

// Fragment is one data region of a sparse file: Length bytes at Offset.
type Fragment struct{ Offset, Length int64 }

const blockSize = 512

// ParseSparse reads the raw bytes that precede one entry's payload (its
// PAX and GNU extension headers, its header block, and for PAX sparse 1.0
// the map that opens the data area) and returns the data map when the entry
// is a sparse file. start is the archive offset of raw[0]; the bytes before
// the next 512-byte boundary are the previous entry's padding.
// archive/tar parses the same map but does not expose it; this parser is
// checked against it on every import (the fragment lengths must add up to
// the bytes the archive holds).
func ParseSparse(raw []byte, start int64) ([]Fragment, bool, error) {
	skip := (blockSize - start%blockSize) % blockSize
	if skip > int64(len(raw)) {
		return nil, false, nil
	}
	raw = raw[skip:]
	var pax []paxRecord
	for len(raw) >= blockSize {
		blk := raw[:blockSize]
		raw = raw[blockSize:]
		if isZero(blk) {
			continue
		}
		typ := blk[156]
		size, err := parseNumeric(blk[124:136])
		if err != nil {
			return nil, false, fmt.Errorf("header size field: %w", err)
		}
		dataBlocks := (size + blockSize - 1) / blockSize
		switch typ {
		case 'x', 'g', 'L', 'K', 'X':
			if int64(len(raw)) < dataBlocks*blockSize {
				return nil, false, fmt.Errorf("extension header data truncated")
			}
			if typ == 'x' || typ == 'X' {
				recs, err := parsePAX(raw[:size])
				if err != nil {
					return nil, false, err
				}
				pax = append(pax, recs...)
			}
			raw = raw[dataBlocks*blockSize:]
			continue
		case 'S':
			return parseOldGNUSparse(blk, raw)
		}
		return parsePAXSparse(pax, raw)
	}
	return nil, false, nil
}

func parseOldGNUSparse(hdr, rest []byte) ([]Fragment, bool, error) {
	var frags []Fragment
	add := func(area []byte, n int) (bool, error) {
		for i := 0; i < n; i++ {
			e := area[i*24 : (i+1)*24]
			if e[0] == 0 {
				return false, nil
			}
			off, err1 := parseNumeric(e[:12])
			length, err2 := parseNumeric(e[12:])
			if err1 != nil || err2 != nil {
				return false, fmt.Errorf("GNU sparse map entry %d is not a number", len(frags))
			}
			frags = append(frags, Fragment{off, length})
		}
		return true, nil
	}
	if _, err := add(hdr[386:482], 4); err != nil {
		return nil, false, err
	}
	extended := hdr[482] != 0
	for extended {
		if len(rest) < blockSize {
			return nil, false, fmt.Errorf("GNU sparse extension block missing")
		}
		blk := rest[:blockSize]
		rest = rest[blockSize:]
		if _, err := add(blk[:504], 21); err != nil {
			return nil, false, err
		}
		extended = blk[504] != 0
	}
	return frags, true, nil
}

type paxRecord struct{ key, value string }

func parsePAX(data []byte) ([]paxRecord, error) {
	var recs []paxRecord
	for len(data) > 0 {
		sp := bytes.IndexByte(data, ' ')
		if sp <= 0 {
			break
		}
		n, err := strconv.Atoi(string(data[:sp]))
		if err != nil || n <= sp || n > len(data) {
			return nil, fmt.Errorf("malformed PAX record")
		}
		rec := data[sp+1 : n]
		data = data[n:]
		rec = bytes.TrimSuffix(rec, []byte("\n"))
		eq := bytes.IndexByte(rec, '=')
		if eq < 0 {
			return nil, fmt.Errorf("malformed PAX record %q", rec)
		}
		recs = append(recs, paxRecord{string(rec[:eq]), string(rec[eq+1:])})
	}
	return recs, nil
}

// parsePAXSparse handles GNU's three PAX sparse formats: 0.0 (repeated
// offset/numbytes records), 0.1 (one comma-separated map record) and 1.0
// (the map in the data area, which raw continues into).
func parsePAXSparse(pax []paxRecord, dataArea []byte) ([]Fragment, bool, error) {
	var major, minor, sparseMap string
	var nums []string
	hasNumBlocks := false
	for _, r := range pax {
		switch r.key {
		case "GNU.sparse.major":
			major = r.value
		case "GNU.sparse.minor":
			minor = r.value
		case "GNU.sparse.map":
			sparseMap = r.value
		case "GNU.sparse.numblocks":
			hasNumBlocks = true
		case "GNU.sparse.offset", "GNU.sparse.numbytes":
			nums = append(nums, r.value)
		}
	}
	switch {
	case major == "1" && minor == "0":
		return parseMap1x0(dataArea)
	case major == "0" && minor == "1" || sparseMap != "":
		return pairs(strings.Split(sparseMap, ","))
	case hasNumBlocks || len(nums) > 0:
		return pairs(nums)
	case major != "" || minor != "":
		// archive/tar treats unknown versions as plain files; so do we.
		return nil, false, nil
	}
	return nil, false, nil
}

func parseMap1x0(area []byte) ([]Fragment, bool, error) {
	// Newline-terminated decimals: the count, then offset/length pairs.
	fields := make([]string, 0, 8)
	for len(fields) == 0 || len(fields) < 1+2*mustAtoi(fields[0]) {
		nl := bytes.IndexByte(area, '\n')
		if nl < 0 {
			return nil, false, fmt.Errorf("PAX sparse 1.0 map truncated")
		}
		fields = append(fields, string(area[:nl]))
		area = area[nl+1:]
		if len(fields) == 1 {
			n, err := strconv.ParseInt(fields[0], 10, 32)
			if err != nil || n < 0 {
				return nil, false, fmt.Errorf("PAX sparse 1.0 map count %q", fields[0])
			}
		}
	}
	return pairs(fields[1:])
}

func mustAtoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

func pairs(nums []string) ([]Fragment, bool, error) {
	if len(nums) == 1 && nums[0] == "" {
		return []Fragment{}, true, nil
	}
	if len(nums)%2 != 0 {
		return nil, false, fmt.Errorf("sparse map has an odd number of fields")
	}
	frags := make([]Fragment, 0, len(nums)/2)
	for i := 0; i < len(nums); i += 2 {
		off, err1 := strconv.ParseInt(nums[i], 10, 64)
		length, err2 := strconv.ParseInt(nums[i+1], 10, 64)
		if err1 != nil || err2 != nil || off < 0 || length < 0 {
			return nil, false, fmt.Errorf("sparse map entry %q,%q is not a pair of numbers", nums[i], nums[i+1])
		}
		frags = append(frags, Fragment{off, length})
	}
	return frags, true, nil
}

// parseNumeric reads a tar numeric field: octal text, or GNU base-256.
func parseNumeric(b []byte) (int64, error) {
	if len(b) > 0 && b[0]&0x80 != 0 {
		var v int64
		for i, c := range b {
			if i == 0 {
				c &= 0x7f
			}
			if v > (1<<55)-1 {
				return 0, fmt.Errorf("base-256 number overflows")
			}
			v = v<<8 | int64(c)
		}
		return v, nil
	}
	s := strings.Trim(string(b), " \x00")
	if s == "" {
		return 0, nil
	}
	return strconv.ParseInt(s, 8, 64)
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
