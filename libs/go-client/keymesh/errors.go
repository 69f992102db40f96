package keymesh

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Error is a call that failed with a gRPC status: refused by the server, or given up by the client (its
// deadline, its cancellation, or its attempts ran out).
//
// It implements GRPCStatus, so status.Code, status.FromError and status.Convert read it.
type Error struct {
	// Code is the gRPC status code.
	Code codes.Code
	// Message is the server's message (or the client's, for a call it gave up).
	Message string
	// RetryDelay is the delay the server asked for before a retry (RetryInfo or retry-after); zero when none.
	RetryDelay time.Duration
	// Attempts is how many times the call was sent.
	Attempts int

	status *status.Status
}

// Error returns "keymesh: CODE_NAME: message".
func (e *Error) Error() string {
	return fmt.Sprintf("keymesh: %s: %s", CodeName(e.Code), e.Message)
}

// CodeName is the canonical name of the code, e.g. "NOT_FOUND".
func (e *Error) CodeName() string { return CodeName(e.Code) }

// GRPCStatus returns the status the error stands for, with the server's details when it sent any.
func (e *Error) GRPCStatus() *status.Status {
	if e.status != nil {
		return e.status
	}
	return status.New(e.Code, e.Message)
}

// Details returns the status's decoded details (such as *errdetails.RetryInfo).
func (e *Error) Details() []interface{} { return e.GRPCStatus().Details() }

// Code returns err's gRPC code: codes.OK for nil, the code of an *Error (however wrapped) or of a gRPC status
// error, and codes.Unknown for anything else.
func Code(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return status.Code(err)
}

var codeNames = map[codes.Code]string{
	codes.OK:                 "OK",
	codes.Canceled:           "CANCELLED",
	codes.Unknown:            "UNKNOWN",
	codes.InvalidArgument:    "INVALID_ARGUMENT",
	codes.DeadlineExceeded:   "DEADLINE_EXCEEDED",
	codes.NotFound:           "NOT_FOUND",
	codes.AlreadyExists:      "ALREADY_EXISTS",
	codes.PermissionDenied:   "PERMISSION_DENIED",
	codes.ResourceExhausted:  "RESOURCE_EXHAUSTED",
	codes.FailedPrecondition: "FAILED_PRECONDITION",
	codes.Aborted:            "ABORTED",
	codes.OutOfRange:         "OUT_OF_RANGE",
	codes.Unimplemented:      "UNIMPLEMENTED",
	codes.Internal:           "INTERNAL",
	codes.Unavailable:        "UNAVAILABLE",
	codes.DataLoss:           "DATA_LOSS",
	codes.Unauthenticated:    "UNAUTHENTICATED",
}

// CodeName returns the canonical (google.rpc.Code) name of c, e.g. "NOT_FOUND", or "CODE(n)" for an unknown
// code.
func CodeName(c codes.Code) string {
	if name, ok := codeNames[c]; ok {
		return name
	}
	return fmt.Sprintf("CODE(%d)", uint32(c))
}

// asError turns a gRPC status error into an *Error, and leaves any other error (nil, io.EOF, an *Error, a
// local failure) as it is.
func asError(err error, attempts int) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	return &Error{Code: st.Code(), Message: st.Message(), Attempts: attempts, status: st}
}

// contextError is the *Error for a call whose context ended while it waited, naming the last failure.
func contextError(ctx context.Context, last *Error, waitingFor string) *Error {
	code := codes.DeadlineExceeded
	if errors.Is(ctx.Err(), context.Canceled) {
		code = codes.Canceled
	}
	msg := fmt.Sprintf("the call's context ended while %s", waitingFor)
	if last != nil {
		msg = fmt.Sprintf("%s (last attempt: %s: %s)", msg, CodeName(last.Code), last.Message)
		return &Error{Code: code, Message: msg, RetryDelay: last.RetryDelay, Attempts: last.Attempts}
	}
	return &Error{Code: code, Message: msg}
}
