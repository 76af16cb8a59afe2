package apply

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"

	"golang.org/x/sys/unix"
)

func isSparse(hdr *tar.Header) bool {
	if hdr.Typeflag == tar.TypeGNUSparse {
		return true
	}
	if len(hdr.PAXRecords) == 0 {
		return false
	}
	// The records GNU tar writes for its 0.0, 0.1 and 1.0 sparse formats.
	for _, k := range [...]string{"GNU.sparse.major", "GNU.sparse.map", "GNU.sparse.numblocks", "GNU.sparse.size", "GNU.sparse.realsize"} {
		if _, ok := hdr.PAXRecords[k]; ok {
			return true
		}
	}
	return false
}

// writeContent copies the entry's content into fd until io.EOF and returns
// its length. Sparse entries get a hole for every 4 KiB block of zeros
// (archive/tar hands out holes as zeros), others are written densely.
func (a *applier) writeContent(hdr *tar.Header, fd int, sparse bool) (int64, error) {
	if !sparse && a.chunks != nil {
		return a.writeChunks(hdr, fd)
	}
	var off int64
	for {
		if off > 0 {
			// A huge entry must not make cancellation wait for its end.
			if err := a.ctx.Err(); err != nil {
				return off, fmt.Errorf("apply %s: %w", hdr.Name, err)
			}
		}
		n, rerr := a.fill()
		if n > 0 {
			var err error
			if sparse {
				err = a.writeSparse(fd, a.buf[:n], off)
			} else {
				err = writeAll(fd, a.buf[:n])
			}
			if err != nil {
				return off, fmt.Errorf("apply %s: write: %w", hdr.Name, err)
			}
			off += int64(n)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return off, fmt.Errorf("apply %s: %w", hdr.Name, rerr)
		}
	}
	if sparse {
		// The file may end in a hole that nothing was written to.
		if err := unix.Ftruncate(fd, off); err != nil {
			return off, fmt.Errorf("apply %s: truncate: %w", hdr.Name, err)
		}
	}
	return off, nil
}

// writeChunks writes a dense entry's content as the source hands it out.
func (a *applier) writeChunks(hdr *tar.Header, fd int) (int64, error) {
	var off int64
	for {
		if off > 0 {
			if err := a.ctx.Err(); err != nil {
				return off, fmt.Errorf("apply %s: %w", hdr.Name, err)
			}
		}
		chunk, rerr := a.chunks.ReadChunk()
		if len(chunk) > 0 {
			if err := writeAll(fd, chunk); err != nil {
				return off, fmt.Errorf("apply %s: write: %w", hdr.Name, err)
			}
			off += int64(len(chunk))
			if a.wb != nil && off-a.started >= writebackStep {
				a.wb.start(fd, a.started, off-a.started)
				a.started = off
			}
		}
		if rerr == io.EOF {
			return off, nil
		}
		if rerr != nil {
			return off, fmt.Errorf("apply %s: %w", hdr.Name, rerr)
		}
	}
}

// fill reads until the buffer is full or the entry ends, so that every
// chunk but the last starts and ends on a hole-block boundary.
func (a *applier) fill() (int, error) {
	n := 0
	for n < len(a.buf) {
		m, err := a.src.Read(a.buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// writeSparse writes chunk at off, skipping the 4 KiB blocks that are all
// zeros; a zero tail shorter than a block is the file's end and is left to
// the final ftruncate.
func (a *applier) writeSparse(fd int, chunk []byte, off int64) error {
	start := -1 // first byte of the run of data blocks not yet written
	for i := 0; i < len(chunk); i += holeBlock {
		block := chunk[i:min(i+holeBlock, len(chunk))]
		if bytes.Equal(block, a.zero[:len(block)]) {
			if start >= 0 {
				if err := pwriteAll(fd, chunk[start:i], off+int64(start)); err != nil {
					return err
				}
				start = -1
			}
			continue
		}
		if start < 0 {
			start = i
		}
	}
	if start >= 0 {
		return pwriteAll(fd, chunk[start:], off+int64(start))
	}
	return nil
}

func writeAll(fd int, p []byte) error {
	for len(p) > 0 {
		n, err := unix.Write(fd, p)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return io.ErrShortWrite
		}
		p = p[n:]
	}
	return nil
}

func pwriteAll(fd int, p []byte, off int64) error {
	for len(p) > 0 {
		n, err := unix.Pwrite(fd, p, off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return io.ErrShortWrite
		}
		p = p[n:]
		off += int64(n)
	}
	return nil
}
