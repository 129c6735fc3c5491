//! The compiled decision policy shared by every listener (proxy, HTTP authz, gRPC authz):
//! normalise the original path, decide whether it is public, authenticate otherwise, and
//! name the identity headers to add. Listeners only translate requests in and answers out,
//! so the proxy and the authorizers can never disagree about a request.

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::auth::extract::Scheme;
use crate::auth::{now_unix, Authenticator, Failure, Verified};
use crate::config::SenderConstraint;
use crate::error::Reject;
use crate::path;
use crate::plan::Plan;
use crate::rules::{Access, Rules};

/// Everything a decision needs, compiled from one config (swapped whole on reload).
pub struct Policy {
    /// Authentication pipeline.
    pub auth: Arc<Authenticator>,
    /// Route rules (public paths first).
    pub rules: Arc<Rules>,
    /// `WWW-Authenticate` realm.
    pub realm: String,
    /// The signed identity added to allowed requests.
    pub assertion: Option<Arc<crate::assertion::Assertions>>,
    /// Protected-resource metadata (RFC 9728), named by every 401's challenge.
    pub resource: Option<Arc<crate::resource::ResourceMetadata>>,
    /// Optional payload header.
    pub payload_header: Option<HeaderName>,
    /// Keep `Authorization` when forwarding.
    pub forward_authorization: bool,
    /// Which unusual path forms are accepted.
    pub path_options: path::PathOptions,
    /// Every spelling of every identity header this sidecar can set (claim headers of all
    /// providers, the payload header): what a gateway is told to remove on every allow.
    pub identity_spellings: Vec<HeaderName>,
    /// DPoP proof checking (its replay cache survives reloads with equal settings).
    pub dpop: Arc<crate::dpop::Dpop>,
    /// `proxy.public_origin`: the origin DPoP proofs are made for, when TLS ends in front.
    pub public_origin: Option<String>,
    /// The proxy listener's own scheme (`https` with `[proxy.tls]`).
    pub listener_scheme: &'static str,
    /// `[authz] trust_forwarded_client_cert`.
    pub trust_forwarded_client_cert: bool,
    /// `admin.readiness`.
    pub readiness: crate::config::Readiness,
}

/// One (original) request as a decision sees it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Its method.
    pub method: &'a str,
    /// The scheme the client used (`http`/`https`) when a gateway says so; `None`: the proxy
    /// listener's. Only DPoP's `htu` looks at it.
    pub scheme: Option<&'a str>,
    /// Its host (`Host` or `:authority`).
    pub host: Option<&'a str>,
    /// The path as sent (not normalised).
    pub raw_path: &'a str,
    /// The query string.
    pub query: Option<&'a str>,
    /// Its headers.
    pub headers: &'a HeaderMap,
    /// The client certificate's `x5t#S256` (mutual TLS on the proxy listener, or a trusted
    /// gateway's report).
    pub client_cert: Option<&'a str>,
}

/// The verdict on one request.
#[derive(Debug)]
pub struct Decision {
    /// The normalised path (absent when the path itself was refused).
    pub path: Option<String>,
    /// The rule that decided (absent when the path itself was refused).
    pub rule: Option<Arc<str>>,
    /// The scopes that rule requires (for the `scope` of a challenge).
    pub scope: Option<Arc<str>>,
    /// That rule's step-up parameters (for an `insufficient_user_authentication` challenge).
    pub step_up: Option<Arc<str>>,
    /// Whether the challenge is a `DPoP` one: the token came as DPoP, the refusal is about
    /// proof of possession, or the route requires DPoP.
    pub dpop: bool,
    /// `Ok(Some)`: authenticated; `Ok(None)`: public; `Err`: refused.
    pub outcome: Result<Option<Verified>, Failure>,
}

impl Decision {
    /// The matched rule's challenge parameters.
    pub fn params(&self) -> ChallengeParams<'_> {
        ChallengeParams {
            scope: self.scope.as_deref(),
            step_up: self.step_up.as_deref(),
            dpop: self.dpop,
        }
    }

    /// `allow` or `deny`.
    pub fn decision(&self) -> &'static str {
        if self.outcome.is_ok() {
            "allow"
        } else {
            "deny"
        }
    }

    /// The metric/log reason.
    pub fn reason(&self) -> &'static str {
        match &self.outcome {
            Ok(Some(_)) => "ok",
            Ok(None) => "public",
            Err(f) => f.reject.reason(),
        }
    }

    /// The provider name, when one was chosen.
    pub fn provider(&self) -> Option<&str> {
        match &self.outcome {
            Ok(Some(v)) => Some(v.provider.name.as_str()),
            Ok(None) => None,
            Err(f) => f.provider.as_ref().map(|p| p.name.as_str()),
        }
    }

    /// The key id (untrusted on refusals: truncate before logging).
    pub fn kid(&self) -> Option<&str> {
        match &self.outcome {
            Ok(Some(v)) => v.info.kid.as_deref(),
            Ok(None) => None,
            Err(f) => f.kid.as_deref(),
        }
    }
}

/// The rule's checks on an authenticated token: step-up first (401, RFC 9470: a new token
/// from a stronger or fresher login can also carry the scopes), then its requirement (403,
/// or its `deny_status`).
fn authorize(
    rule: &crate::rules::Rule,
    req: Option<&crate::rules::Requirement>,
    v: Verified,
    now: u64,
) -> Result<Option<Verified>, Failure> {
    let refuse = |reject| Failure {
        reject,
        provider: Some(v.provider.clone()),
        kid: v.info.kid.clone(),
    };
    if let Some(s) = &rule.step_up {
        if !s.holds(&v.info.claims, now, v.provider.claims.leeway) {
            return Err(refuse(Reject::InsufficientUserAuthentication));
        }
    }
    match req {
        Some(r) if !r.check(&v) => Err(refuse(
            rule.deny_status
                .map_or(Reject::InsufficientScope, Reject::RuleRequirement),
        )),
        _ => Ok(Some(v)),
    }
}

/// What a challenge adds to a refusal's RFC 6750 parameters, from the matched rule.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChallengeParams<'a> {
    /// The scopes the rule requires.
    pub scope: Option<&'a str>,
    /// Its step-up parameters (`acr_values`, `max_age`).
    pub step_up: Option<&'a str>,
    /// Challenge with the `DPoP` scheme (and its `algs`) instead of `Bearer`.
    pub dpop: bool,
}

impl Policy {
    /// The decision part of a plan, around its authenticator.
    pub fn new(plan: &Plan, auth: Arc<Authenticator>) -> Self {
        let config = &plan.config;
        let identity_spellings = auth.reserved.spellings();
        Policy {
            rules: plan.rules.clone(),
            realm: config.proxy.realm.clone(),
            resource: plan.resource.clone(),
            assertion: plan.assertion.clone(),
            payload_header: config
                .proxy
                .payload_header
                .as_deref()
                .and_then(|h| HeaderName::try_from(h.to_ascii_lowercase()).ok()),
            forward_authorization: config.proxy.forward_authorization,
            auth,
            path_options: config.proxy.path_options(),
            identity_spellings,
            readiness: config.admin.readiness,
            dpop: plan.dpop.clone(),
            public_origin: config
                .proxy
                .public_origin
                .as_deref()
                .map(|o| o.trim_end_matches('/').to_string()),
            listener_scheme: if config.proxy.tls.is_some() {
                "https"
            } else {
                "http"
            },
            trust_forwarded_client_cert: config.authz.trust_forwarded_client_cert,
        }
    }

    /// Decides on an (original) request: method, host, raw path, query and headers, as
    /// addressed over the proxy listener's scheme (or `proxy.public_origin`).
    pub async fn decide(
        &self,
        method: &str,
        host: Option<&str>,
        raw_path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Decision {
        let req = Request {
            method,
            scheme: None,
            host,
            raw_path,
            query,
            headers,
            client_cert: None,
        };
        self.decide_request(&req).await
    }

    /// Decides on an (original) request.
    pub async fn decide_request(&self, r: &Request<'_>) -> Decision {
        let refused = |reject| Decision {
            path: None,
            rule: None,
            scope: None,
            step_up: None,
            dpop: false,
            outcome: Err(Failure::from(reject)),
        };
        if self.connection_names_identity(r.headers) {
            return refused(Reject::HopByHopIdentity);
        }
        let normalized = match path::normalize_with(r.raw_path, &self.path_options) {
            Ok(p) => p,
            Err(reject) => return refused(reject),
        };
        let rule = self.rules.find(r.method, r.host, &normalized);
        let mut dpop = matches!(
            rule.sender_constraint,
            Some(SenderConstraint::Dpop | SenderConstraint::Any)
        );
        let outcome = match &rule.access {
            Access::Public => Ok(None),
            Access::Deny => Err(Failure::from(Reject::NoMatchingRule)),
            Access::Anonymous(req) | Access::Authenticated(req) => {
                let anonymous_ok = matches!(rule.access, Access::Anonymous(_));
                match self.auth.extract(r.headers, r.query) {
                    Ok(Some((token, scheme))) => {
                        dpop |= scheme == Scheme::Dpop;
                        let now = now_unix();
                        match self.auth.authenticate(token, now).await {
                            Ok(v) => {
                                let constrained =
                                    self.constrain(rule, &v, token, scheme, r, now, &mut ());
                                if let Err(reject) = constrained {
                                    dpop |= !matches!(reject, Reject::CertificateBound);
                                    Err(Failure {
                                        reject,
                                        provider: Some(v.provider.clone()),
                                        kid: v.info.kid.clone(),
                                    })
                                } else {
                                    authorize(rule, req.as_ref(), v, now)
                                }
                            }
                            Err(f) => Err(f),
                        }
                    }
                    Ok(None) if anonymous_ok => Ok(None),
                    Ok(None) => Err(Failure::from(Reject::Missing)),
                    Err(r) => Err(Failure::from(r)),
                }
            }
        };
        Decision {
            path: Some(normalized),
            rule: Some(rule.name.clone()),
            scope: rule.scope.clone(),
            step_up: rule.step_up.as_ref().map(|s| s.params.clone()),
            dpop,
            outcome,
        }
    }

    /// The URI a DPoP proof must name for this request: `public_origin` or the scheme and
    /// `Host` it arrived with, then the path as sent.
    /// `None` (every proof fails `htu`) for a `Host` that is not a plain `host[:port]`: it
    /// comes from the client, and `h?` or `h/x` would cut or shift the path it is joined to.
    pub fn request_uri(&self, r: &Request<'_>) -> Option<String> {
        if !r.raw_path.starts_with('/') {
            return None;
        }
        match &self.public_origin {
            Some(origin) => Some(format!("{origin}{}", r.raw_path)),
            None => {
                let scheme = r.scheme.unwrap_or(self.listener_scheme);
                let h = r.host?;
                let plain = h
                    .parse::<http::uri::Authority>()
                    .is_ok_and(|a| a.as_str() == h)
                    && !h.contains(['@', '/', '?', '#', '\\'])
                    && !h.is_empty();
                plain.then(|| format!("{scheme}://{h}{}", r.raw_path))
            }
        }
    }

    /// Proof of possession: a token bound to a key (`cnf.jkt`) must come with a valid DPoP
    /// proof by that key, a `DPoP`-scheme token must be bound and proven, a token bound to a
    /// certificate needs that certificate, and the route (or the provider) may require a
    /// bound token. Counted per provider.
    #[allow(clippy::too_many_arguments)]
    pub fn constrain(
        &self,
        rule: &crate::rules::Rule,
        v: &Verified,
        token: &str,
        scheme: Scheme,
        r: &Request<'_>,
        now: u64,
        obs: &mut impl crate::jose::Observer,
    ) -> Result<(), Reject> {
        use crate::jose::Check;
        let m = &self.auth.metrics;
        let provider = v.provider.name.as_str();
        let required = rule
            .sender_constraint
            .unwrap_or(v.provider.sender_constraint);
        let jkt = crate::dpop::bound_jkt(&v.info.claims);
        // RFC 8705: a certificate-bound token needs that client certificate, whatever the
        // scheme; `Some(true)` when it matches.
        let cert = crate::dpop::bound_x5t(&v.info.claims).map(|t| r.client_cert == Some(t));
        let (kind, result) = match scheme {
            // A confirmation this sidecar cannot check (another method, or `jkt` that is not
            // a string) is never read as "unbound".
            _ if !crate::dpop::confirmation_understood(&v.info.claims) => {
                ("bearer", Err(Reject::UnknownConfirmation))
            }
            _ if cert == Some(false) => ("mtls", Err(Reject::CertificateBound)),
            Scheme::Dpop => {
                let uri = self.request_uri(r).unwrap_or_default();
                let proof = crate::dpop::ProofRequest {
                    method: r.method,
                    uri: &uri,
                    token,
                    now,
                };
                let bound = self
                    .dpop
                    .verify_proof(r.headers, &proof, jkt, obs)
                    .map(|_| ());
                let evicted = self.dpop.replay.take_evictions();
                if evicted > 0 {
                    m.dpop_replay_evictions_total.inc_by(evicted);
                }
                m.dpop_proofs_total
                    .with_label_values(&[provider, bound.err().map_or("ok", |e| e.code())])
                    .inc();
                let result = match bound {
                    Err(e) => Err(Reject::DpopProof(e)),
                    Ok(()) if required == SenderConstraint::Mtls && cert.is_none() => {
                        Err(Reject::SenderConstraintRequired)
                    }
                    Ok(()) => Ok(()),
                };
                ("dpop", result)
            }
            Scheme::Bearer => {
                let proven = cert == Some(true);
                let result = if jkt.is_some() {
                    Err(Reject::DpopBoundAsBearer)
                } else if required != SenderConstraint::Optional
                    && !(proven
                        && matches!(required, SenderConstraint::Mtls | SenderConstraint::Any))
                {
                    Err(Reject::SenderConstraintRequired)
                } else {
                    Ok(())
                };
                (if proven { "mtls" } else { "bearer" }, result)
            }
        };
        obs.step(Check::SenderConstraint, result.is_ok(), || match &result {
            Ok(()) => format!("sender constraint {required:?}: {kind} token accepted"),
            Err(e) => format!("sender constraint {required:?}: {}", e.description()),
        });
        match (kind, &result) {
            ("bearer", Ok(())) => v.provider.bearer_ok_counter(m).inc(),
            _ => m
                .sender_constraint_total
                .with_label_values(&[
                    provider,
                    kind,
                    result.as_ref().err().map_or("ok", Reject::reason),
                ])
                .inc(),
        }
        result
    }

    /// The `WWW-Authenticate` challenge of a refusal: the RFC 6750 parameters, the `scope`
    /// the matched rule needs (on 401 and 403), and on a 401 the `resource_metadata` URL
    /// (RFC 9728 section 5.1) from which a client learns where to get a token.
    pub fn challenge(&self, reject: &Reject, params: ChallengeParams<'_>) -> Option<String> {
        let mut c = reject.www_authenticate(&self.realm)?;
        let status = reject.status();
        let dpop = params.dpop
            || matches!(
                reject,
                Reject::DpopProof(_) | Reject::DpopBoundAsBearer | Reject::SenderConstraintRequired
            );
        if dpop && (status == 401 || status == 403) {
            // RFC 9449 section 7.1: the DPoP scheme, with the proof algorithms accepted.
            if let Some(rest) = c.strip_prefix("Bearer ") {
                c = format!("DPoP {rest}, algs=\"{}\"", self.dpop.algs_param);
            }
        }
        if let Some(s) = params
            .step_up
            .filter(|_| *reject == Reject::InsufficientUserAuthentication)
        {
            c.push_str(", ");
            c.push_str(s);
        }
        if let Some(s) = params.scope.filter(|_| status == 401 || status == 403) {
            c.push_str(&format!(", scope=\"{s}\""));
        }
        if let Some(r) = self.resource.as_ref().filter(|_| status == 401) {
            c.push_str(&format!(", resource_metadata=\"{}\"", r.url));
        }
        Some(c)
    }

    /// The headers of a refusal: `WWW-Authenticate` (see `challenge`), and `Retry-After`
    /// on 503.
    pub fn reject_headers(
        &self,
        reject: &Reject,
        params: ChallengeParams<'_>,
    ) -> Vec<(HeaderName, HeaderValue)> {
        let mut extra = Vec::new();
        if let Some(v) = self
            .challenge(reject, params)
            .and_then(|s| HeaderValue::from_str(&s).ok())
        {
            extra.push((http::header::WWW_AUTHENTICATE, v));
        }
        if reject.status() == 503 {
            extra.push((http::header::RETRY_AFTER, HeaderValue::from_static("5")));
        }
        // RFC 9449 section 9: the nonce the next proof must carry.
        if *reject == Reject::DpopProof(crate::dpop::ProofError::Nonce) {
            if let Some(v) = self
                .dpop
                .fresh_nonce(now_unix())
                .and_then(|n| HeaderValue::from_str(&n).ok())
            {
                extra.push((HeaderName::from_static("dpop-nonce"), v));
            }
        }
        extra
    }

    /// The headers the app should receive for a verified token: claim headers and the
    /// payload header.
    pub fn identity_headers(&self, v: &Verified) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = v.info.headers.clone();
        if let Some(h) = &self.payload_header {
            out.push((h.clone(), v.info.payload.clone()));
        }
        if let Some(a) = &self.assertion {
            match a.mint(v, now_unix()) {
                Some(value) => out.push((a.header.clone(), value)),
                // Not reachable with a working RNG; never forward without saying so.
                None => {
                    tracing::error!(provider = %v.provider.name, "could not sign the assertion for the app; request forwarded without it")
                }
            }
        }
        out
    }

    /// Whether the request's `Connection` header names an identity header (any spelling, or
    /// the identity prefix): a proxy that honours it after adding identity headers would
    /// forward an authenticated request without them.
    pub fn connection_names_identity(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(http::header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .filter_map(|t| std::str::from_utf8(t).ok())
            .map(str::trim)
            .any(|t| !t.is_empty() && self.auth.reserved.is_reserved(t))
    }

    /// What an allow answer tells a gateway to remove: every spelling of every identity
    /// header (whether or not the gateway showed the client's copy), plus any other
    /// identity-looking header the client sent, minus the headers this answer sets (a
    /// gateway removes after it sets, so naming those would drop the verified values).
    pub fn headers_to_remove(
        &self,
        spoofed: &[HeaderName],
        set: &[(HeaderName, HeaderValue)],
    ) -> Vec<HeaderName> {
        let unset = |n: &&HeaderName| !set.iter().any(|(h, _)| h == *n);
        // `identity_spellings` is sorted and deduplicated once, when the policy is compiled;
        // the client's own spoofs (usually none) are added only when not already listed.
        let extra = spoofed.iter().filter(|n| {
            self.identity_spellings
                .binary_search_by(|s| s.as_str().cmp(n.as_str()))
                .is_err()
        });
        self.identity_spellings
            .iter()
            .chain(extra)
            .filter(unset)
            .cloned()
            .collect()
    }

    /// Names of inbound headers that could pass for identity headers (to strip or to ask the
    /// gateway to strip), as sent; counted per listener.
    pub fn spoofed_header_names(
        &self,
        listener: &'static str,
        headers: &HeaderMap,
    ) -> Vec<HeaderName> {
        let names: Vec<HeaderName> = headers
            .keys()
            .filter(|n| self.auth.reserved.is_reserved(n.as_str()))
            .cloned()
            .collect();
        if !names.is_empty() {
            self.auth
                .metrics
                .spoofed_headers_removed_total
                .with_label_values(&[listener])
                .inc_by(names.len() as u64);
        }
        names
    }

    /// Counts the decision and writes the one log line of the request.
    pub fn record(
        &self,
        listener: &'static str,
        d: &Decision,
        method: &str,
        status: u16,
        request_id: &str,
        started: Instant,
    ) {
        let m = &self.auth.metrics;
        // An allowed request counts through its provider's counter, resolved once.
        let allowed = match &d.outcome {
            Ok(Some(v)) => v.provider.allowed_counter(listener, m),
            _ => None,
        };
        match allowed {
            Some(c) => c.inc(),
            None => m
                .requests_total
                .with_label_values(&[
                    listener,
                    d.provider().unwrap_or(""),
                    d.decision(),
                    d.reason(),
                ])
                .inc(),
        }
        tracing::info!(
            target: crate::telemetry::ACCESS_TARGET,
            listener,
            request_id,
            method,
            path = d.path.as_deref().unwrap_or("<refused>"),
            rule = d.rule.as_deref().unwrap_or(""),
            decision = d.decision(),
            reason = d.reason(),
            provider = d.provider().unwrap_or(""),
            kid = crate::telemetry::truncate(d.kid().unwrap_or(""), 64),
            status,
            latency_us = started.elapsed().as_micros() as u64,
            "request"
        );
    }
}
