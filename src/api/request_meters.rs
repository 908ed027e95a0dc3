//! Counts and times every HTTP answer by route template (axum's [`MatchedPath`], never the
//! raw path: ids would make a series each), method and status.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use metrics::{Counter, Histogram};

use crate::meters;

/// Requests that matched no route.
const UNMATCHED: &str = "unmatched";

/// Each route's series by method and status.
type ByRoute = HashMap<String, HashMap<(&'static str, u16), (Counter, Histogram)>>;

/// The series handles of each (route, method, status) seen, so that a request costs a
/// read lock and a lookup, not a label set built and hashed by the recorder.
#[derive(Default)]
pub struct RequestMeters {
    routes: RwLock<ByRoute>,
}

impl RequestMeters {
    fn record(&self, route: &str, method: &'static str, status: u16, seconds: f64) {
        let known = self
            .routes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(route)
            .and_then(|by| by.get(&(method, status)))
            .map(|(counter, histogram)| {
                counter.increment(1);
                histogram.record(seconds);
            });
        if known.is_some() {
            return;
        }
        let labels = [
            ("route", route.to_owned()),
            ("method", method.to_owned()),
            ("status", status.to_string()),
        ];
        let counter = metrics::counter!(meters::HTTP_REQUESTS, &labels);
        let histogram = metrics::histogram!(meters::HTTP_DURATION, &labels[..2]);
        counter.increment(1);
        histogram.record(seconds);
        self.routes
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(route.to_owned())
            .or_default()
            .insert((method, status), (counter, histogram));
    }
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

pub async fn layer(
    State(meters): State<Arc<RequestMeters>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = request.extensions().get::<MatchedPath>().cloned();
    let response = next.run(request).await;
    let route = route.as_ref().map_or(UNMATCHED, MatchedPath::as_str);
    meters.record(
        route,
        method,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}
