//! The kernel's counters: one per-CPU slot each in COUNTERS, with the
//! metric name and help text `/metrics` shows.

/// Defines [`Counter`] (the indexes of the COUNTERS per-CPU array),
/// [`COUNTER_COUNT`], and each counter's metric name and help text, from one
/// list. Names become `waggle_<name>_total` on `/metrics`.
macro_rules! kernel_counters {
    ($($variant:ident => $name:literal: $help:literal,)*) => {
        /// Per-CPU counters, indexes into the COUNTERS PerCpuArray.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter {
            $(#[doc = $help] $variant,)*
        }

        pub const COUNTER_COUNT: u32 = [$(Counter::$variant),*].len() as u32;

        impl Counter {
            pub const ALL: [Counter; COUNTER_COUNT as usize] = [$(Counter::$variant),*];

            /// Metric name (without the `waggle_` prefix and `_total` suffix).
            pub const fn name(self) -> &'static str {
                match self {
                    $(Counter::$variant => $name,)*
                }
            }

            /// HELP text on `/metrics`: what is counted and what it means.
            pub const fn help(self) -> &'static str {
                match self {
                    $(Counter::$variant => $help,)*
                }
            }
        }
    };
}

kernel_counters! {
    EventsLost => "kernel_events_lost":
        "events the kernel could not write (ring buffer full)",
    DataEvents => "kernel_data_events": "payload events the kernel emitted",
    DataTruncated => "kernel_data_truncated": "payloads longer than the capture size (prefix sent)",
    ConnsOpened => "kernel_conns_opened": "connections the kernel started tracking",
    MapInsertFailed => "kernel_map_insert_failed": "kernel map inserts that failed (map full)",
    ReadFailed => "kernel_user_read_failed": "failed reads of user memory (payloads, arguments)",
    MutedEvents => "kernel_muted_events": "data events on muted connections (counted, not copied)",
    Injected => "propagation_injected": "traceparent headers inserted into outgoing requests",
    // One skip counter per `skip_reason`, in its order (`Counter::skip`).
    SkipAlreadyHasTraceparent => "propagation_skipped_has_traceparent":
        "injection skipped: request already carried a traceparent",
    SkipNotRequestStart => "propagation_skipped_not_request_start":
        "injection skipped: message was not the start of a request",
    SkipInsideBody => "propagation_skipped_inside_body":
        "injection skipped: bytes that look like a request inside the current request's body",
    SkipHeadersIncomplete => "propagation_skipped_headers_incomplete":
        "injection skipped: the request's header block was not whole in its first send",
    SkipPushFailed => "propagation_skipped_push_failed":
        "injection skipped: inserting the header into the message failed",
    SkipNotInSockhash => "propagation_skipped_not_in_sockhash": "injection skipped: socket not in the sockhash",
    SkipBoundaryLost => "propagation_skipped_boundary_lost":
        "injection skipped: an earlier request's end on this connection was unknown (chunked, upgrade, incomplete header block)",
    SkipSendBufferLow => "propagation_skipped_send_buffer_low":
        "injection skipped: the socket might not take the whole message at once",
    SkipAgentStalled => "propagation_skipped_agent_stalled":
        "injection skipped: the agent has not drained events recently",
    IncomingTraceparent => "propagation_incoming_traceparent":
        "server requests that arrived with a valid traceparent",
    ServerCtxStarted => "propagation_server_ctx_started": "server request contexts the kernel started",
    IncomingUntrusted => "propagation_incoming_untrusted":
        "incoming traceparent ignored: peer outside the trusted networks",
    SockmapAdded => "propagation_sockmap_added":
        "client sockets of traced processes added to the propagation sockmap",
    SockmapRefused => "propagation_sockmap_refused":
        "sockets the propagation sockmap refused (full, or owned by another sk_msg program): client sockets of traced processes, and accepted sockets with --trace-response-header",
    SockmapLeft => "propagation_sockmap_left":
        "client sockets that left the propagation sockmap at their first packet (FIONREAD-safe mode)",
    ConnLost => "kernel_conn_lost":
        "reads/writes on a tracked connection whose CONNS entry was gone when the call returned (evicted from the full LRU map, after which the connection is untracked and its close unreported; or closed by another thread during the call): payload not captured",
    InjectPendingLost => "kernel_inject_pending_lost":
        "client requests whose INJECT_PENDING entry was gone when their send returned (evicted from the full LRU map, or its insert failed): their ids are not reported, so a traceparent sent with them names a span that is never exported",
    PendingStored => "kernel_pending_stored":
        "syscall entries that left arguments in PENDING for their exit; stored minus taken is syscalls still running (threads blocked in a read) plus entries lost: evicted from the full LRU map or left by a thread that died in the call",
    PendingTaken => "kernel_pending_taken":
        "syscall exits that found a PENDING entry (the agent's stand-ins for reads blocked at its start included); see kernel_pending_stored",
    OwnConnsSkipped => "kernel_own_conns_skipped":
        "connections accepted from the agent's own sockets (its export traffic to a collector on this node): not traced",
    SocketUnreadable => "kernel_socket_unreadable":
        "accepted/connected descriptors whose socket the kernel could not read (addresses taken from the caller's sockaddr, or looked up by userspace)",
    FdSweepCut => "kernel_fd_sweep_cut":
        "close_range(), exec() or fork() calls over more descriptors than the kernel checks (4096): connections past them end only at their close() (fork: are copied to the child by userspace)",
    UnseenIo => "kernel_unseen_io":
        "splice(), recvmmsg() or sendmmsg() calls on tracked connections: bytes moved by a path the agent does not read (spans of those exchanges may be missing or cut)",
    IoUringSetup => "kernel_io_uring_setup":
        "io_uring instances set up by processes with tracked connections: I/O submitted through them is not seen",
    FastcgiServerCtx => "propagation_fastcgi_server_ctx":
        "FastCGI requests (FCGI_BEGIN_REQUEST) a responder read: server contexts the kernel started for them",
    LinkedParent => "propagation_linked_parent":
        "server requests with no traceparent of their own whose parent is the same-host client request that sent them (FastCGI)",
    ConnsInherited => "kernel_conns_inherited":
        "connections a tracked process held when it forked, copied to the child in the kernel so the child's first read is seen (accept-then-fork servers)",
    VerdictInheritFailed => "kernel_trace_verdict_inherit_failed":
        "forks whose child could not take its parent's trace-selection verdict (TRACE_VERDICT full): the child stays undecided (traced) until the agent decides it",
    UntracedConnects => "kernel_untraced_connects":
        "TCP connects by processes the trace-selection rules leave out, seen by the propagation sockops program and kept out of the sockmap",
    TlsNoConn => "kernel_tls_no_conn":
        "TLS library calls whose connection was not known (no read/write syscall on a tracked connection inside any call on that SSL object yet, a memory BIO, or the connection is gone): plaintext not captured",
    TlsCallLost => "kernel_tls_call_lost":
        "TLS library calls whose entry record was gone at their return (evicted from the full LRU map, or the probe attached mid-call): plaintext not captured",
    TlsCiphertextSkipped => "kernel_tls_ciphertext_skipped":
        "read/write syscalls on connections whose plaintext the TLS probes capture: the ciphertext is not copied",
    TlsPlaintextMuted => "kernel_tls_plaintext_muted":
        "TLS library calls on connections whose plaintext the agent found unparseable: not copied",
    FastcgiTraceparent => "propagation_fastcgi_traceparent":
        "FastCGI requests with no same-host link whose context took the HTTP_TRACEPARENT param (also counted in propagation_incoming_traceparent)",
    FastcgiTraceparentSkipped => "propagation_fastcgi_traceparent_skipped":
        "FastCGI requests with no same-host link whose HTTP_TRACEPARENT param was not taken: several of them, an invalid value, or the request was answered first",
    FastcgiParamsUnread => "propagation_fastcgi_params_unread":
        "FastCGI requests with no same-host link whose params the kernel could not walk (split across reads, longer than the capture, not records): an HTTP_TRACEPARENT among them is not taken",
    ScanCut => "kernel_header_scan_cut":
        "reduced mode (kernels without bpf_loop): request header blocks longer than the kernel's bounded scan: a traceparent past it is not joined in the kernel",
    ExecEnvCut => "kernel_exec_env_cut":
        "execs whose OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES was longer than 255 bytes: the value was cut",
    ExecEnvScanCut => "kernel_exec_env_scan_cut":
        "execs whose environment was longer than the kernel walks (1024 strings or 511-byte pieces) or unreadable part way: variables past that were not seen",
    TlsHandshakeBound => "kernel_tls_handshake_bound":
        "SSL objects of an executable that links OpenSSL statically (node) bound to their connection at its handshake write: their later calls are captured",
    TlsFdBound => "kernel_tls_fd_bound":
        "SSL objects bound to their connection when the application handed them its descriptor (SSL_set_fd): their calls are captured even when none does a syscall (a TLS 1.3 handshake that read the first request with it)",
    ResponseHeaderInserted => "response_header_inserted":
        "--trace-response-header: traceresponse / X-Trace-Id lines inserted into HTTP/1.x responses",
    ResponseSocksAdded => "response_header_socks_added":
        "--trace-response-header: accepted sockets on a listening port of such a process added to the sockmap",
    // One counter per `http::response::skip` reason, in its order
    // (`Counter::response_skip`).
    ResponseSkipHasTraceHeader => "response_header_skipped_has_trace_header":
        "response header skipped: the response already named a trace (traceresponse or X-Trace-Id)",
    ResponseSkipInterim => "response_header_skipped_interim":
        "response header skipped: a 1xx interim or 101 Switching Protocols response",
    ResponseSkipHeadersIncomplete => "response_header_skipped_headers_incomplete":
        "response header skipped: the response's header block was not whole in its first send",
    ResponseSkipBoundaryLost => "response_header_skipped_boundary_lost":
        "response header skipped: an earlier response's end on this connection was unknown (chunked, close-delimited, upgrade, pipelined)",
    ResponseSkipNoServerSpan => "response_header_skipped_no_server_span":
        "response header skipped: the kernel knew no server span for the request answered",
    ResponseSkipNotResponseStart => "response_header_skipped_not_response_start":
        "response header skipped: the bytes the socket layer got were not those the syscall saw",
    ResponseSkipSendBufferLow => "response_header_skipped_send_buffer_low":
        "response header skipped: the socket might not take the whole message at once",
    ResponseSkipPushFailed => "response_header_skipped_push_failed":
        "response header skipped: inserting the line into the message failed",
    ResponseSkipNotInSockhash => "response_header_skipped_not_in_sockhash":
        "response header skipped: the socket was not in the sockmap (accepted before its port was known, or the map was full)",
    ResponseSkipAgentStalled => "response_header_skipped_agent_stalled":
        "response header skipped: the agent has not drained events recently (the ids could name a span never exported)",
}

impl Counter {
    /// The skip counter for a `skip_reason` value.
    pub const fn skip(reason: u32) -> u32 {
        Counter::SkipAlreadyHasTraceparent as u32 + reason
    }

    /// The counter for an `http::response::skip` value.
    pub const fn response_skip(reason: u32) -> u32 {
        Counter::ResponseSkipHasTraceHeader as u32 + reason
    }
}
