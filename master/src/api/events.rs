//! `GET /events`: the SSE stream (see `crate::sse`).

use actix_web::{HttpRequest, HttpResponse};

use super::State;

/// Opens a stream; `Last-Event-ID` resumes from the replay buffer. The
/// first burst comes from the hub's snapshot source, taken after the stream
/// is registered, so no event falls between the burst and live events.
pub async fn events(state: State, req: HttpRequest) -> HttpResponse {
    let last = crate::sse::last_event_id(req.headers());
    state.hub.subscribe_with_source(last)
}
