//! Child processes that die with the daemon and only with it.
//!
//! `PR_SET_PDEATHSIG` sends its signal when the *thread* that forked the child exits, not the
//! process. Tokio's threads come and go (the blocking pool retires idle threads), so a child forked
//! from one of them could be killed in the middle of an action when that thread retires. Every
//! child is therefore forked from one thread that lives as long as the process: it dies with the
//! daemon (a crashed container takes its processes with it, and an orphan acting unsupervised is
//! worse than a pending release), and at no other time.

use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

type Job = Box<dyn FnOnce() + Send>;

/// The thread that forks every child; it never exits before the process does.
fn forker() -> &'static Mutex<mpsc::Sender<Job>> {
    static FORKER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    FORKER.get_or_init(|| {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("child-forker".into())
            .spawn(move || {
                for job in queue {
                    job();
                }
            })
            .expect("start the thread that forks children");
        Mutex::new(jobs)
    })
}

/// Spawns `command` so that it is killed (SIGKILL) when this process dies, and only then.
pub async fn spawn(mut command: tokio::process::Command) -> std::io::Result<tokio::process::Child> {
    die_with_forking_thread(command.as_std_mut());
    let runtime = tokio::runtime::Handle::current();
    let (reply, answer) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        // The child is registered with this runtime's process driver, which reaps it.
        let _runtime = runtime.enter();
        let _ = reply.send(command.spawn());
    });
    forker()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send(job)
        .map_err(|_| std::io::Error::other("the child-forking thread is gone"))?;
    answer
        .await
        .map_err(|_| std::io::Error::other("the child-forking thread dropped the request"))?
}

/// Asks the kernel to SIGKILL the child when the thread that forks it exits. Fork from a thread
/// that lives as long as the process (as [`spawn`] does), or the child dies with that thread.
#[allow(unsafe_code)]
pub fn die_with_forking_thread(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::time::{Duration, Instant};

    fn sleeper() -> tokio::process::Command {
        let mut command = tokio::process::Command::new("sleep");
        command.arg("30").kill_on_drop(true);
        command
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_child_outlives_the_thread_that_asked_for_it() {
        let runtime = tokio::runtime::Handle::current();
        // One short-lived thread starts two children: one forked by itself with the death signal
        // (what spawning from a worker thread did), one through `spawn`. Then the thread exits.
        let (mut forked_here, mut supervised) = std::thread::spawn(move || {
            runtime.block_on(async {
                let mut here = sleeper();
                die_with_forking_thread(here.as_std_mut());
                (here.spawn().unwrap(), spawn(sleeper()).await.unwrap())
            })
        })
        .join()
        .unwrap();

        // The thread's exit kills the child it forked itself…
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = forked_here.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the thread's exit did not kill its child"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        // …and by then it would have killed the other too, had it forked it.
        assert!(
            supervised.try_wait().unwrap().is_none(),
            "a child died with the thread that asked for it"
        );
        supervised.kill().await.unwrap();
    }
}
