package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/layerfs/layerfs/doctor"
	"github.com/layerfs/layerfs/graph"
)

func doctorCommand() *cli.Command {
	return &cli.Command{
		Name:  "doctor",
		Usage: "say what this environment allows and which driver mount will use",
		Description: `Checks the user namespace, the store's filesystem (writable, xattrs), kernel
overlayfs (a real trial mount), /dev/fuse, fusermount3, /etc/fuse.conf, FUSE
passthrough and subordinate ID ranges, with a hint for each problem. Exits 1
when no driver can mount here. The store is not created.`,
		Flags: []cli.Flag{jsonFlag},
		Action: func(c *cli.Context) error {
			root := c.String("store")
			if root == "" {
				var err error
				if root, err = graph.DefaultRoot(); err != nil {
					return err
				}
			}
			r := doctor.Assess(doctor.Gather(c.Context, doctor.Options{Store: root}))
			var err error
			if c.Bool("json") {
				err = printJSON(c.App.Writer, r)
			} else {
				err = doctor.Render(c.App.Writer, r)
			}
			if err != nil {
				return err
			}
			if r.Driver == "" {
				return fmt.Errorf("doctor: no driver can mount here")
			}
			return nil
		},
	}
}
