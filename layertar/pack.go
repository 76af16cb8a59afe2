package layertar

import (
	"crypto/sha256"
	"fmt"
	"hash/crc64"
	"sync/atomic"

	"github.com/vbatts/tar-split/tar/storage"
)

// packWorker runs tar-split's packer, the diffID's sha256 and the
// payloads' crc64 on a goroutine of its own, fed in batches: for a layer
// of small files the record's JSON and gzip cost more CPU than parsing the
// tar, for large files the two hashes do, and either way the applier's
// goroutine is left with parsing and system calls.
type packWorker struct {
	packer  storage.Packer
	batches chan *batch
	free    chan *batch
	cur     *batch
	done    chan struct{}
	failed  atomic.Bool
	err     error // written by the worker, read after done or failed
	sum     []byte
	ended   bool
}

type opKind uint8

const (
	opSegment opKind = iota // raw bytes: one SegmentType entry
	opPayload               // payload bytes of the current entry
	opFile                  // end of an entry: one FileType entry
)

type op struct {
	kind     opKind
	off, end int
	name     string
	size     int64
}

type batch struct {
	buf []byte
	ops []op
}

const (
	batchBytes = 1 << 20
	batchOps   = 4096
)

func newPackWorker(p storage.Packer) *packWorker {
	w := &packWorker{packer: p, batches: make(chan *batch, 2), free: make(chan *batch, 4), done: make(chan struct{})}
	for i := 0; i < 4; i++ {
		w.free <- &batch{buf: make([]byte, 0, batchBytes)}
	}
	w.cur = <-w.free
	go w.run()
	return w
}

func (w *packWorker) run() {
	defer close(w.done)
	sha := sha256.New()
	crc := crc64.New(storage.CRCTable)
	for b := range w.batches {
		for _, o := range b.ops {
			if w.err != nil {
				break
			}
			data := b.buf[o.off:o.end]
			switch o.kind {
			case opSegment:
				sha.Write(data)
				// The JSON packer encodes the entry before it returns.
				if _, err := w.packer.AddEntry(storage.Entry{Type: storage.SegmentType, Payload: data}); err != nil {
					w.fail(fmt.Errorf("record tar segment: %w", err))
				}
			case opPayload:
				sha.Write(data)
				crc.Write(data)
			case opFile:
				e := storage.Entry{Type: storage.FileType, Size: o.size}
				if o.size > 0 {
					e.Payload = crc.Sum(nil)
				}
				e.SetName(o.name)
				if _, err := w.packer.AddEntry(e); err != nil {
					w.fail(fmt.Errorf("record %q: %w", o.name, err))
				}
				crc.Reset()
			}
		}
		b.buf, b.ops = b.buf[:0], b.ops[:0]
		w.free <- b
	}
	w.sum = sha.Sum(nil)
}

func (w *packWorker) fail(err error) {
	w.err = err
	w.failed.Store(true)
}

// failure returns the worker's error, if it has failed yet.
func (w *packWorker) failure() error {
	if w.failed.Load() {
		return w.err
	}
	return nil
}

func (w *packWorker) flush() {
	if len(w.cur.ops) == 0 {
		return
	}
	w.batches <- w.cur
	w.cur = <-w.free
}

// segment records raw bytes as one segment (copied).
func (w *packWorker) segment(p []byte) {
	if cap(w.cur.buf)-len(w.cur.buf) < len(p) || len(w.cur.ops) >= batchOps {
		w.flush()
		if cap(w.cur.buf) < len(p) {
			w.cur.buf = make([]byte, 0, len(p))
		}
	}
	off := len(w.cur.buf)
	w.cur.buf = append(w.cur.buf, p...)
	w.cur.ops = append(w.cur.ops, op{kind: opSegment, off: off, end: len(w.cur.buf)})
}

// payload hashes payload bytes (copied).
func (w *packWorker) payload(p []byte) {
	for len(p) > 0 {
		room := cap(w.cur.buf) - len(w.cur.buf)
		if room == 0 || len(w.cur.ops) >= batchOps {
			w.flush()
			room = cap(w.cur.buf) - len(w.cur.buf)
		}
		k := min(room, len(p))
		off := len(w.cur.buf)
		w.cur.buf = append(w.cur.buf, p[:k]...)
		if n := len(w.cur.ops); n > 0 && w.cur.ops[n-1].kind == opPayload && w.cur.ops[n-1].end == off {
			w.cur.ops[n-1].end = len(w.cur.buf)
		} else {
			w.cur.ops = append(w.cur.ops, op{kind: opPayload, off: off, end: len(w.cur.buf)})
		}
		p = p[k:]
	}
}

// file ends the current entry.
func (w *packWorker) file(name string, size int64) {
	if len(w.cur.ops) >= batchOps {
		w.flush()
	}
	w.cur.ops = append(w.cur.ops, op{kind: opFile, off: len(w.cur.buf), end: len(w.cur.buf), name: name, size: size})
}

// finish waits for everything to be recorded and returns the sha256 of
// the stream.
func (w *packWorker) finish() ([]byte, error) {
	if !w.ended {
		w.ended = true
		w.flush()
		close(w.batches)
	}
	<-w.done
	return w.sum, w.err
}
