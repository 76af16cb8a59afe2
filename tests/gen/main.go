// Command gen writes sample images for the demo and the benchmarks: an OCI
// image layout of the varied three-layer sample, or of n small files.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/layerfs/layerfs/compression"
	"github.com/layerfs/layerfs/internal/imagegen"
)

func main() {
	out := flag.String("o", "", "directory to write the OCI layout into")
	kind := flag.String("kind", "sample", "sample (three varied layers) or many (n small files)")
	n := flag.Int("n", 10000, "files, for -kind many")
	comp := flag.String("compress", "gzip", "none, gzip or zstd")
	name := flag.String("name", "demo:latest", "image name to record in the layout")
	flag.Parse()
	if *out == "" {
		fmt.Fprintln(os.Stderr, "gen: -o DIR is required")
		os.Exit(2)
	}
	if err := run(*out, *kind, *n, *comp, *name); err != nil {
		fmt.Fprintf(os.Stderr, "gen: %v\n", err)
		os.Exit(1)
	}
}

func run(out, kind string, n int, comp, name string) error {
	c, err := compression.ParseFormat(comp)
	if err != nil {
		return err
	}
	var layers [][]byte
	switch kind {
	case "sample":
		layers, err = imagegen.SampleLayers()
	case "many":
		var l []byte
		l, err = imagegen.ManyFiles(n, 1000, 1)
		layers = [][]byte{l}
	default:
		return fmt.Errorf("unknown -kind %q", kind)
	}
	if err != nil {
		return err
	}
	id, err := imagegen.WriteOCILayout(out, layers, c, name)
	if err != nil {
		return err
	}
	fmt.Println(id)
	return nil
}
