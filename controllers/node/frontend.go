package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Frontends an engine serves.
const (
	frontendNBD  = "nbd"
	frontendFUSE = "fuse"
	// frontendNone exposes nothing: the engine of a detached volume serves
	// only its control endpoint, for snapshots and backups.
	frontendNone = "none"
)

// nbdAvailable reports whether the kernel NBD client can be used: the nbd
// module is loaded and nbd-client is installed.
func nbdAvailable() bool {
	if _, err := os.Stat("/sys/module/nbd"); err != nil {
		return false
	}
	_, err := exec.LookPath("nbd-client")
	return err == nil
}

// chooseFrontend resolves spec.frontend: "" means nbd where available,
// else fuse; an explicit nbd without kernel support is a spec error.
func chooseFrontend(spec string) (string, error) {
	switch spec {
	case frontendFUSE, frontendNone:
		return spec, nil
	case frontendNBD:
		if !nbdAvailable() {
			return "", errors.New("frontend nbd needs the nbd kernel module and nbd-client on the node; use fuse or leave frontend empty")
		}
		return frontendNBD, nil
	case "":
		if nbdAvailable() {
			return frontendNBD, nil
		}
		return frontendFUSE, nil
	}
	return "", fmt.Errorf("unknown frontend %q", spec)
}

// ensureNBD connects a free /dev/nbdN to the engine's NBD socket with
// nbd-client, or returns the device already connected for engine pid.
func (a *Agent) ensureNBD(ctx context.Context, vol string, pid int) (string, error) {
	if l, ok := a.loops.get(vol); ok {
		if l.pid == pid && nbdConnected(l.dev) {
			return l.dev, nil
		}
		if err := a.detachFrontend(ctx, vol); err != nil {
			return "", err
		}
	}
	dev, err := freeNBD()
	if err != nil {
		return "", err
	}
	sock := trimUnix(a.nbdAddr(vol))
	out, err := exec.CommandContext(ctx, "nbd-client", "-N", vol, "-unix", sock, dev).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("nbd-client %s: %w: %s", dev, err, strings.TrimSpace(string(out)))
	}
	a.loops.set(vol, loopAttachment{dev: dev, file: sock, pid: pid, nbd: true})
	return dev, nil
}

// freeNBD returns an NBD device with no client connected.
func freeNBD() (string, error) {
	devs, _ := filepath.Glob("/sys/block/nbd*")
	for _, d := range devs {
		dev := "/dev/" + filepath.Base(d)
		if !nbdConnected(dev) {
			return dev, nil
		}
	}
	return "", errors.New("no free /dev/nbd device (load nbd with more nbds_max)")
}

// nbdConnected reports whether an NBD device has a client connected.
func nbdConnected(dev string) bool {
	_, err := os.Stat(filepath.Join("/sys/block", filepath.Base(dev), "pid"))
	return err == nil
}

// detachFrontend releases vol's block device: its loop devices (by backing
// file, so ones left by a crashed engine go too) or its NBD connection.
func (a *Agent) detachFrontend(ctx context.Context, vol string) error {
	if l, ok := a.loops.get(vol); ok && l.nbd {
		if nbdConnected(l.dev) {
			if out, err := exec.CommandContext(ctx, "nbd-client", "-d", l.dev).CombinedOutput(); err != nil {
				return fmt.Errorf("nbd-client -d %s: %w: %s", l.dev, err, strings.TrimSpace(string(out)))
			}
		}
		a.loops.remove(vol)
		return nil
	}
	return a.detachVolumeLoop(ctx, vol)
}

// clearVolume releases vol's block device and unmounts whatever is mounted
// at its mountpoint (a FUSE mount whose engine is gone).
func (a *Agent) clearVolume(ctx context.Context, vol string) error {
	if err := a.detachFrontend(ctx, vol); err != nil {
		return err
	}
	for _, m := range mountsUnder(a.mountpoint(vol)) {
		if err := unmount(m); err != nil {
			return err
		}
	}
	return nil
}
