package fuse

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// AttachLoop puts file on a free loop device and returns the device path.
// It asks for direct I/O on the loop device (no second page cache) and falls
// back to buffered loop I/O where the kernel refuses it.
func AttachLoop(ctx context.Context, file string) (string, error) {
	out, err := losetup(ctx, "--find", "--show", "--direct-io=on", file)
	if err != nil {
		out, err = losetup(ctx, "--find", "--show", file)
		if err != nil {
			return "", err
		}
	}
	dev := strings.TrimSpace(out)
	if !strings.HasPrefix(dev, "/dev/loop") {
		return "", fmt.Errorf("fuse: losetup printed %q", out)
	}
	return dev, nil
}

// DetachLoop detaches a loop device, retrying while it is briefly busy.
func DetachLoop(ctx context.Context, dev string) error {
	var err error
	for i := 0; i < 20; i++ {
		if _, err = losetup(ctx, "-d", dev); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(100 * time.Millisecond):
		}
	}
	return err
}

// LoopDevicesFor lists the loop devices backed by file.
func LoopDevicesFor(ctx context.Context, file string) ([]string, error) {
	out, err := losetup(ctx, "--noheadings", "--output", "NAME", "-j", file)
	if err != nil {
		return nil, err
	}
	return strings.Fields(out), nil
}

func losetup(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, "losetup", args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("fuse: losetup %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}
