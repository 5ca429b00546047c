package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	v1 "github.com/cairnstore/cairn/api/v1alpha1"
	"github.com/cairnstore/cairn/controllers/targets"
	"github.com/cairnstore/cairn/internal/netx"
)

// The local S3 target of `cairn dev`: versitygw over DATA/s3/data, its
// keys and port kept in DATA/s3/credentials (0600) so the next run finds the
// same backups at the same address.
const (
	devS3Bucket = "cairn-dev"
	devS3Region = "us-east-1"
	devS3Secret = "cairn-dev-s3"
)

type devS3 struct {
	endpoint       string
	access, secret string
}

// startS3 runs versitygw when `make tools` built it and stores its keys in
// the Secret cairn-system/cairn-dev-s3; without it the samples' target
// stays a directory.
func (d *devRun) startS3(ctx context.Context) error {
	bin := filepath.Join(devBinDir(d.opts.binDir), "versitygw")
	if _, err := os.Stat(bin); err != nil {
		fmt.Printf("No %s (run `make tools`): backups go to %s/backups instead of a local S3 server.\n", bin, d.dataDir)
		return nil
	}
	dir := filepath.Join(d.dataDir, "s3")
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o700); err != nil {
		return err
	}
	s, port, err := loadDevS3(filepath.Join(dir, "credentials"))
	if err != nil {
		return err
	}
	stop, err := runVersitygw(bin, dir, port, s)
	if err != nil {
		return err
	}
	d.onStop(stop)
	if d.network != nil {
		// Agents in namespaces cannot reach the host's loopback.
		fwd, err := d.network.forwardS3(port)
		if err != nil {
			return err
		}
		d.onStop(func() { _ = fwd.Close() })
		s.endpoint = "http://" + fwd.Addr()
	}
	if err := createBucket(ctx, s); err != nil {
		return err
	}
	d.s3 = s
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: v1.SystemNamespace, Name: devS3Secret}}
	_, err = controllerutil.CreateOrUpdate(ctx, d.client, sec, func() error {
		sec.Data = map[string][]byte{targets.SecretAccessKeyID: []byte(s.access), targets.SecretSecretAccessKey: []byte(s.secret)}
		return nil
	})
	return err
}

// loadDevS3 reads the keys and port of an earlier run, or makes new ones.
func loadDevS3(path string) (*devS3, int, error) {
	vals, err := readKeyValues(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		port, err := netx.FreePort("127.0.0.1")
		if err != nil {
			return nil, 0, err
		}
		s := &devS3{access: rand.Text(), secret: rand.Text() + rand.Text()}
		data := fmt.Sprintf("ACCESS=%s\nSECRET=%s\nPORT=%d\n", s.access, s.secret, port)
		if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
			return nil, 0, err
		}
		s.endpoint = fmt.Sprintf("http://127.0.0.1:%d", port)
		return s, port, nil
	case err != nil:
		return nil, 0, err
	}
	port, err := strconv.Atoi(vals["PORT"])
	if err != nil || vals["ACCESS"] == "" || vals["SECRET"] == "" {
		return nil, 0, fmt.Errorf("%s: needs ACCESS, SECRET and PORT (delete it to start afresh)", path)
	}
	return &devS3{endpoint: fmt.Sprintf("http://127.0.0.1:%d", port), access: vals["ACCESS"], secret: vals["SECRET"]}, port, nil
}

// runVersitygw starts versitygw on 127.0.0.1:port (keys in its environment,
// never argv) and waits until it listens.
func runVersitygw(bin, dir string, port int, s *devS3) (func(), error) {
	logf, err := os.OpenFile(filepath.Join(dir, "versitygw.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	cmd := exec.Command(bin, "--region", devS3Region, "--port", addr, "posix", filepath.Join(dir, "data"))
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY_ID="+s.access, "ROOT_SECRET_ACCESS_KEY="+s.secret)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start versitygw: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	stop := func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		logf.Close()
	}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if netx.Listening(context.Background(), addr, 200*time.Millisecond) {
			return stop, nil
		}
		select {
		case <-exited:
			logf.Close()
			return nil, fmt.Errorf("versitygw exited at start (port %d taken? see %s)", port, logf.Name())
		default:
		}
		if time.Now().After(deadline) {
			stop()
			return nil, fmt.Errorf("versitygw did not listen on %s (see %s)", addr, logf.Name())
		}
	}
}

// createBucket creates the dev bucket unless it exists.
func createBucket(ctx context.Context, s *devS3) error {
	c := s3.New(s3.Options{Region: devS3Region, BaseEndpoint: aws.String(s.endpoint), UsePathStyle: true,
		Credentials: credentials.NewStaticCredentialsProvider(s.access, s.secret, "")})
	_, err := c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(devS3Bucket)})
	if err != nil && !strings.Contains(err.Error(), "BucketAlreadyOwnedByYou") && !strings.Contains(err.Error(), "BucketAlreadyExists") {
		return fmt.Errorf("create bucket %s: %w", devS3Bucket, err)
	}
	return nil
}

// pointAtS3 makes a sample BackupTarget use the local S3 server.
func (s *devS3) pointAtS3(o *unstructured.Unstructured) error {
	spec := map[string]any{"url": "s3://" + devS3Bucket + "/backups", "endpoint": s.endpoint, "region": devS3Region,
		"credentialsSecretRef": map[string]any{"namespace": v1.SystemNamespace, "name": devS3Secret}}
	for k, v := range spec {
		if err := unstructured.SetNestedField(o.Object, v, "spec", k); err != nil {
			return err
		}
	}
	return nil
}
