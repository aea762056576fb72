// Package container is tandem's system-container driver: a whole OS (its init as PID 1) in its own
// namespaces, run by runc from a generated OCI bundle, checkpointed and restored with CRIU.
//
// # Layout on disk
//
//	<Dir>/idmap.json                 host id ranges handed out (one per unprivileged container)
//	<Dir>/<id>/config.json           the OCI bundle config, rebuilt on every Start
//	<Dir>/<id>/rootfs/               private copy of the image, owned by the container's id range
//	<Dir>/<id>/state.json            the driver's record (id range, shutdown signal, checkpoint flag)
//	<Dir>/<id>/console.log[.1]       console output, rotated at Options.ConsoleLogMax
//	<Dir>/<id>/checkpoint/, criu/    CRIU images of a stateful stop (+ tandem-dump.json), and CRIU's logs
//	<Dir>/<id>/rootfs -> DIR         an adopted container's shared rootfs (a symlink; never deleted here)
//	<Dir>/<id>/rootfs -> TREE        a root disk on a storage pool (Spec.Root, root.go): a dir or btrfs
//	                                 tree linked, an ext4 image loop-mounted on rootfs/ while it runs
//	<Dir>/<id>/snapshots/SNAP/       CRIU images of a stateful snapshot (snapshots.go)
//	<RunDir>/runc/                   runc --root
//	<RunDir>/<16 hex of sha256(id)>/ init.pid, shim.{json,pid,log}, console.sock (runc -> shim),
//	                                 attach.sock (clients -> shim), seccomp.sock (sysinfo agent),
//	                                 netns (bind mount of the container's network namespace), exit.json,
//	                                 hook.sock (restore hook -> daemon), criu.conf (CRIU options)
//
// # Processes
//
// Start runs a shim (the daemon binary re-executed with ShimArg, in its own session) that runs
// `runc create` itself and is a child subreaper: the container's init becomes its child, so init
// is reaped even where PID 1 does not reap orphans, and the shim outlives the daemon. The shim
// holds the console pty master from runc's console socket (log + attach socket) and answers the
// container's sysinfo(2) calls (seccomp user notification) with the container's memory and
// uptime. The daemon then bind-mounts the network namespace, calls Options.PrepareNetwork and
// runs `runc start`. A restarted daemon needs no reconnection: Recover checks runc's state.
//
// # Namespaces
//
// Unprivileged (default): a user namespace maps container 0-65535 to a 65536-id host range from
// idmap (1000000 + n*65536); the rootfs copy is chowned into it. security.privileged=true runs
// without a user namespace. runc creates the network namespace inside the user namespace (not
// joined by path): only then can the container's root configure its network and mount sysfs, and
// only then can CRIU restore it (CRIU creates the user namespace on restore, and its root task
// cannot setns into a network namespace owned by another user namespace: "Can't setns 17/net:
// Operation not permitted").
//
// # CRIU
//
// Stop with Stateful runs `runc checkpoint --tcp-established --file-locks`; the next Start runs
// `runc restore --detach` from the shim. Fixes that make it work on our hosts: the images are
// chowned to the container's root and timens-0.img made world-readable (the restored root task
// opens it from inside the new user namespace before its id map is written); the seccomp
// filter's user-notification returns are rewritten to "allow" in seccomp.img (CRIU restores
// filters without their listener, which would make sysinfo fail with ENOSYS).
//
// runc 1.1 always hands CRIU the network namespace as "empty" (its CLI sets CLONE_NEWNET in
// CRIU's empty_ns mask; a namespace passed by path would be "external" instead, which a
// user-namespaced restore cannot join), so CRIU writes no netdev/ifaddr/route images and
// restores into a bare namespace. The driver therefore records the namespace's interfaces,
// addresses and routes itself (tandem-dump.json, netconf.go) and fills the new namespace from a
// createRuntime hook that runc runs on CRIU's "setup-namespaces" notification, after CRIU made
// the namespaces and before it restores sockets (nethook.go): lo up, PrepareNetwork, addresses
// and routes back, the namespace's traffic held (netlock.go) until CRIU's own lock takes over.
// Established TCP connections from outside survive.
//
// Live migration (migrate.go, adopt.go, lazy.go; MIGRATION.md for the integrator): Dump on the
// source, Adopt and Restore on the destination, CommitDump and Release (or AbortDump) on the
// source; lazy (post-copy) dumps serve memory through a page server behind a proxy of the
// driver's own (pageproxy.go).
package container
