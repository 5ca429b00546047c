package backupstore

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/logging"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// s3Target stores objects in an S3 bucket under a prefix.
type s3Target struct {
	client  *s3.Client
	bucket  string
	prefix  string // "" or "dir/" (with trailing slash)
	url     string
	timeout time.Duration
	stall   time.Duration // see TargetOptions.StallTimeout
}

func openS3Target(ctx context.Context, bucket, prefix string, opts TargetOptions) (Target, error) {
	if opts.Region == "" {
		opts.Region = "us-east-1"
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = 60 * time.Second
	}
	if opts.MaxAttempts <= 0 {
		opts.MaxAttempts = 3
	}
	if opts.StallTimeout <= 0 {
		opts.StallTimeout = DefaultStallTimeout
	}
	var caPool *x509.CertPool
	if len(opts.CABundle) > 0 {
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(opts.CABundle) {
			return nil, fmt.Errorf("backupstore: CA bundle holds no PEM certificates")
		}
		caPool = pool
	}
	// A buildable client, so the SDK can still add AWS_CA_BUNDLE from the
	// environment; timeouts bound how long a dead endpoint can stall us.
	httpClient := awshttp.NewBuildableClient().
		WithDialerOptions(func(d *net.Dialer) { d.Timeout = 5 * time.Second; d.KeepAlive = 30 * time.Second }).
		WithTransportOptions(func(tr *http.Transport) {
			tr.TLSHandshakeTimeout = 10 * time.Second
			tr.ResponseHeaderTimeout = min(opts.RequestTimeout, opts.StallTimeout)
			tr.MaxIdleConns = 256
			tr.MaxIdleConnsPerHost = 64
			tr.IdleConnTimeout = 90 * time.Second
			if caPool != nil {
				if tr.TLSClientConfig == nil {
					tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
				}
				tr.TLSClientConfig.RootCAs = caPool
			}
		})
	loadOpts := []func(*config.LoadOptions) error{
		config.WithRegion(opts.Region),
		config.WithLogger(logging.Nop{}),
		config.WithHTTPClient(httpClient),
		config.WithRetryer(func() aws.Retryer {
			return retry.NewStandard(func(o *retry.StandardOptions) {
				o.MaxAttempts = opts.MaxAttempts
				o.MaxBackoff = 2 * time.Second
			})
		}),
	}
	if opts.Endpoint != "" {
		// An S3-compatible endpoint has no EC2 instance roles: do not spend
		// the probe timeout asking the metadata service.
		loadOpts = append(loadOpts, config.WithEC2IMDSClientEnableState(imds.ClientDisabled))
	}
	if opts.AccessKeyID != "" || opts.SecretAccessKey != "" {
		loadOpts = append(loadOpts, config.WithCredentialsProvider(
			credentials.NewStaticCredentialsProvider(opts.AccessKeyID, opts.SecretAccessKey, opts.SessionToken)))
	}
	cfg, err := config.LoadDefaultConfig(ctx, loadOpts...)
	if err != nil {
		return nil, fmt.Errorf("backupstore: s3 config: %w", err)
	}
	client := s3.NewFromConfig(cfg, func(o *s3.Options) {
		if opts.Endpoint != "" {
			o.BaseEndpoint = aws.String(opts.Endpoint)
		}
		o.UsePathStyle = !opts.VirtualHostStyle
		o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
	})
	if prefix != "" {
		prefix += "/"
	}
	t := &s3Target{client: client, bucket: bucket, prefix: prefix, timeout: opts.RequestTimeout, stall: opts.StallTimeout,
		url: "s3://" + bucket + "/" + strings.TrimSuffix(prefix, "/")}
	if opts.Endpoint != "" {
		t.url += " (endpoint " + opts.Endpoint + ")"
	}
	// Probe once so a bad bucket, bad credentials or a dead endpoint is one
	// clear error now rather than a failure half-way through a backup.
	pctx, cancel := context.WithTimeout(ctx, opts.ProbeTimeout)
	defer cancel()
	_, err = client.HeadBucket(pctx, &s3.HeadBucketInput{Bucket: aws.String(bucket)}, func(o *s3.Options) {
		o.RetryMaxAttempts = 2
	})
	if err != nil {
		return nil, t.mapErr("open", "", err)
	}
	return t, nil
}

func (t *s3Target) String() string { return t.url }

// mapErr turns SDK errors into this package's sentinels with context.
func (t *s3Target) mapErr(op, key string, err error) error {
	if err == nil {
		return nil
	}
	where := fmt.Sprintf("s3 %s %s", op, t.url)
	if key != "" {
		where += " " + key
	}
	if errors.Is(err, ErrStalled) {
		return fmt.Errorf("%s: %w", where, err)
	}
	// Credentials that could not be resolved never reached the server:
	// say so instead of reporting whatever the credential source returned.
	if msg := err.Error(); strings.Contains(msg, "get identity:") || strings.Contains(msg, "failed to retrieve credentials") {
		return fmt.Errorf("%w: %s: %v", ErrNoCredentials, where, err)
	}
	var nsk *types.NoSuchKey
	var nf *types.NotFound
	var nsb *types.NoSuchBucket
	switch {
	case errors.As(err, &nsb):
		return fmt.Errorf("%w: %s: bucket %q", ErrBucketNotFound, where, t.bucket)
	case errors.As(err, &nsk), errors.As(err, &nf):
		if key == "" {
			return fmt.Errorf("%w: %s: bucket %q", ErrBucketNotFound, where, t.bucket)
		}
		return fmt.Errorf("%w: %s", ErrNotFound, key)
	}
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode() {
		case "NoSuchBucket":
			return fmt.Errorf("%w: %s: bucket %q", ErrBucketNotFound, where, t.bucket)
		case "NoSuchKey", "NotFound":
			if key == "" {
				return fmt.Errorf("%w: %s: bucket %q", ErrBucketNotFound, where, t.bucket)
			}
			return fmt.Errorf("%w: %s", ErrNotFound, key)
		case "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden":
			return fmt.Errorf("%w: %s: %s", ErrAccessDenied, where, apiErr.ErrorCode())
		}
	}
	var respErr *smithyhttp.ResponseError
	if errors.As(err, &respErr) {
		switch respErr.HTTPStatusCode() {
		case http.StatusNotFound:
			if key == "" {
				return fmt.Errorf("%w: %s: bucket %q", ErrBucketNotFound, where, t.bucket)
			}
			return fmt.Errorf("%w: %s", ErrNotFound, key)
		case http.StatusForbidden, http.StatusUnauthorized:
			return fmt.Errorf("%w: %s", ErrAccessDenied, where)
		}
	}
	var netErr net.Error
	var opErr *net.OpError
	var dnsErr *net.DNSError
	if errors.As(err, &opErr) || errors.As(err, &dnsErr) || (errors.As(err, &netErr) && netErr.Timeout()) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: %s: %v", ErrUnreachable, where, err)
	}
	return fmt.Errorf("backupstore: %s: %w", where, err)
}

func (t *s3Target) opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	// Bound the whole operation including retries.
	return context.WithTimeout(ctx, 3*t.timeout)
}

func (t *s3Target) Get(ctx context.Context, key string) ([]byte, error) {
	return t.GetInto(ctx, key, nil, maxPlainPayload)
}

// GetInto reads an object into buf. A Content-Length above limit is
// refused before anything is allocated, and the body is read through a
// LimitReader, so a missing or lying length cannot make it read more. A
// request that makes no progress for the stall timeout fails with
// ErrStalled.
func (t *s3Target) GetInto(ctx context.Context, key string, buf []byte, limit int64) ([]byte, error) {
	ctx, cancel := t.opCtx(ctx)
	defer cancel()
	ctx, watch, stop := watchStalls(ctx, t.stall)
	defer stop()
	out, err := t.client.GetObject(ctx, &s3.GetObjectInput{Bucket: &t.bucket, Key: aws.String(t.prefix + key)})
	if err != nil {
		return nil, t.mapErr("get", key, stallCause(ctx, err))
	}
	defer out.Body.Close()
	n := aws.ToInt64(out.ContentLength)
	if n > limit {
		return nil, tooLarge(key, n, limit)
	}
	body := watch.reader(io.LimitReader(out.Body, limit+1))
	if n > 0 {
		if int64(cap(buf)) < n {
			buf = make([]byte, n)
		}
		buf = buf[:n]
		if _, err := io.ReadFull(body, buf); err != nil {
			return nil, t.mapErr("get", key, stallCause(ctx, err))
		}
		return buf, nil
	}
	b := bytes.NewBuffer(buf[:0])
	if _, err := b.ReadFrom(body); err != nil {
		return nil, t.mapErr("get", key, stallCause(ctx, err))
	}
	if int64(b.Len()) > limit {
		return nil, tooLarge(key, int64(b.Len()), limit)
	}
	return b.Bytes(), nil
}

// GetRange reads n bytes at off of key with one Range GET. The answer must
// be exactly n bytes (a shorter object is errShortObject); the body is read
// through a LimitReader and the stall watch like GetInto's.
func (t *s3Target) GetRange(ctx context.Context, key string, off, n int64, buf []byte) ([]byte, error) {
	ctx, cancel := t.opCtx(ctx)
	defer cancel()
	ctx, watch, stop := watchStalls(ctx, t.stall)
	defer stop()
	rng := fmt.Sprintf("bytes=%d-%d", off, off+n-1)
	out, err := t.client.GetObject(ctx, &s3.GetObjectInput{Bucket: &t.bucket, Key: aws.String(t.prefix + key), Range: &rng})
	if err != nil {
		var apiErr smithy.APIError
		if errors.As(err, &apiErr) && apiErr.ErrorCode() == "InvalidRange" {
			return nil, fmt.Errorf("%w: %s: range %s", errShortObject, key, rng)
		}
		return nil, t.mapErr("get", key, stallCause(ctx, err))
	}
	defer out.Body.Close()
	if got := aws.ToInt64(out.ContentLength); got != n {
		return nil, fmt.Errorf("%w: %s: %d bytes for range %s", errShortObject, key, got, rng)
	}
	if int64(cap(buf)) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(watch.reader(io.LimitReader(out.Body, n)), buf); err != nil {
		return nil, t.mapErr("get", key, stallCause(ctx, err))
	}
	return buf, nil
}

func (t *s3Target) Put(ctx context.Context, key string, data []byte) error {
	ctx, cancel := t.opCtx(ctx)
	defer cancel()
	ctx, watch, stop := watchStalls(ctx, t.stall)
	defer stop()
	_, err := t.client.PutObject(ctx, &s3.PutObjectInput{
		Bucket:        &t.bucket,
		Key:           aws.String(t.prefix + key),
		Body:          watch.readSeeker(bytes.NewReader(data)),
		ContentLength: aws.Int64(int64(len(data))),
		ContentType:   aws.String("application/octet-stream"),
	})
	return t.mapErr("put", key, stallCause(ctx, err))
}

func (t *s3Target) Exists(ctx context.Context, key string) (bool, error) {
	ctx, cancel := t.opCtx(ctx)
	defer cancel()
	_, err := t.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &t.bucket, Key: aws.String(t.prefix + key)})
	if err == nil {
		return true, nil
	}
	err = t.mapErr("head", key, err)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	return false, err
}

func (t *s3Target) Delete(ctx context.Context, key string) error {
	ctx, cancel := t.opCtx(ctx)
	defer cancel()
	_, err := t.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &t.bucket, Key: aws.String(t.prefix + key)})
	err = t.mapErr("delete", key, err)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}

func (t *s3Target) List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error {
	p := s3.NewListObjectsV2Paginator(t.client, &s3.ListObjectsV2Input{
		Bucket: &t.bucket,
		Prefix: aws.String(t.prefix + prefix),
	})
	for p.HasMorePages() {
		pctx, cancel := t.opCtx(ctx)
		page, err := p.NextPage(pctx)
		cancel()
		if err != nil {
			return t.mapErr("list", prefix, err)
		}
		for _, o := range page.Contents {
			info := ObjectInfo{Key: strings.TrimPrefix(aws.ToString(o.Key), t.prefix), Size: aws.ToInt64(o.Size)}
			if o.LastModified != nil {
				info.ModTime = *o.LastModified
			}
			if err := fn(info); err != nil {
				return err
			}
		}
	}
	return nil
}
