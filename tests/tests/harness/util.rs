use std::time::{Duration, Instant};

use p2c_tests::{require_root, wait_for};

#[tokio::test]
async fn wait_for_returns_as_soon_as_the_condition_holds() {
    let start = Instant::now();
    let value = wait_for("a value", Duration::from_secs(5), || async {
        (start.elapsed() > Duration::from_millis(30)).then_some(42)
    })
    .await;
    assert_eq!(value, 42);
    assert!(start.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
#[should_panic(expected = "waiting for the controller to listen; last error: refused")]
async fn wait_for_names_what_it_waited_for() {
    wait_for("the controller to listen", Duration::from_millis(100), || async { Err::<(), _>("refused") })
        .await;
}

#[tokio::test]
#[should_panic(expected = "waiting for a hung attempt")]
async fn wait_for_bounds_a_hung_attempt() {
    wait_for("a hung attempt", Duration::from_millis(100), std::future::pending::<bool>).await;
}

#[test]
fn require_root_returns_early_only_without_root() {
    let mut reached = false;
    (|| {
        require_root!();
        reached = true;
    })();
    assert_eq!(reached, p2c_tests::is_root());
}
