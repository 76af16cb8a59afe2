package statoverride

// A rootless store cannot set security.capability (that needs CAP_SETFCAP
// in the initial user namespace), so it keeps a file's capability under a
// user.* name the way fuse-overlayfs does for containers/storage's layers
// (its "user.containers.override_" prefix before the security.* name). The
// FUSE union shows it as security.capability and a commit writes it back
// under that name.
const (
	// SecurityCapability is the attribute a capability lives in.
	SecurityCapability = "security.capability"
	// CapabilityXattr is where a rootless store keeps it.
	CapabilityXattr = "user.containers.override_" + SecurityCapability
)
