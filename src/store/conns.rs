//! Long-lived PostgreSQL connections for the hot read queries (integrations and projects,
//! merged by the lanes of `reads.rs`).
//!
//! sqlx's pool pings every connection it gets back, one extra network round trip per query;
//! the benchmark's profile showed it on every request. These connections go back to the set without a ping
//! when their query finished, and are dropped instead when it failed or was cancelled half
//! way, so a broken connection is never handed out again and the next lease reconnects: a
//! database that went away and came back is picked up again by itself.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use sqlx::PgConnection;
use tokio::sync::{Semaphore, SemaphorePermit};

use super::sql::classify;
use super::{StoreError, StoreResult};

type Connect = Box<
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<PgConnection, sqlx::Error>> + Send>>
        + Send
        + Sync,
>;

/// A bounded set of connections handed out one lease at a time.
pub struct Conns {
    idle: Mutex<Vec<PgConnection>>,
    permits: Semaphore,
    connect: Connect,
    timeout: Duration,
}

impl std::fmt::Debug for Conns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conns")
            .field("available", &self.permits.available_permits())
            .finish_non_exhaustive()
    }
}

impl Conns {
    /// At most `size` connections, opened by `connect` when needed; a lease waits at most
    /// `timeout` for a connection.
    pub fn new(size: usize, timeout: Duration, connect: Connect) -> Self {
        Self {
            idle: Mutex::new(Vec::with_capacity(size)),
            permits: Semaphore::new(size.max(1)),
            connect,
            timeout,
        }
    }

    /// A connection for one query; call [`Lease::finish`] when the query succeeded.
    pub async fn lease(&self) -> StoreResult<Lease<'_>> {
        let unavailable = || StoreError::Unavailable("no database connection available".into());
        let permit = tokio::time::timeout(self.timeout, self.permits.acquire())
            .await
            .map_err(|_| unavailable())?
            .map_err(|_| unavailable())?;
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match idle {
            Some(conn) => conn,
            None => tokio::time::timeout(self.timeout, (self.connect)())
                .await
                .map_err(|_| unavailable())?
                .map_err(classify)?,
        };
        Ok(Lease {
            conn: Some(conn),
            owner: self,
            finished: false,
            _permit: permit,
        })
    }
}

/// One connection on loan.
pub struct Lease<'a> {
    conn: Option<PgConnection>,
    owner: &'a Conns,
    finished: bool,
    _permit: SemaphorePermit<'a>,
}

impl Lease<'_> {
    /// The connection.
    pub fn conn(&mut self) -> &mut PgConnection {
        // Only `Drop` takes the connection out.
        self.conn
            .as_mut()
            .unwrap_or_else(|| unreachable!("lease without a connection"))
    }

    /// The query succeeded: the connection goes back to the set.
    pub fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let (true, Some(conn)) = (self.finished, self.conn.take()) {
            self.owner
                .idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(conn);
        }
    }
}
