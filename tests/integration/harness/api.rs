//! The management API as an operator's client uses it: login, requests with the bearer token, waiting for states.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::bot::{ADMIN_PASSWORD, BotEnv};
use super::daemon::Daemon;

pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
    pub token: Option<String>,
}

impl Api {
    pub fn new(env: &BotEnv) -> Api {
        Api { base: env.api_url(), http: reqwest::Client::new(), token: None }
    }

    /// Starts `maubot run` for `env`, waits until its API answers, and logs in.
    pub async fn start_logged_in(env: &BotEnv) -> (Daemon, Api) {
        let mut daemon = env.spawn_run();
        let mut api = Api::new(env);
        api.wait_up(&mut daemon).await;
        api.login().await;
        (daemon, api)
    }

    pub async fn wait_up(&self, daemon: &mut Daemon) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.http.get(format!("{}/health", self.base)).send().await.is_err() {
            assert!(Instant::now() < deadline, "the API did not come up; log:\n{}", daemon.log());
            assert!(daemon.child.try_wait().unwrap().is_none(), "maubot exited; log:\n{}", daemon.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn login(&mut self) {
        let response = self
            .http
            .post(format!("{}/api/v1/login", self.base))
            .json(&json!({"username": "admin", "password": ADMIN_PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        self.token = Some(body["token"].as_str().unwrap().to_owned());
    }

    pub async fn request(&self, method: reqwest::Method, path: &str) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.request(reqwest::Method::GET, path).await
    }

    pub async fn post(&self, path: &str) -> (u16, Value) {
        self.request(reqwest::Method::POST, path).await
    }

    pub async fn instance(&self, id: &str) -> Value {
        let (status, body) = self.get(&format!("/api/v1/instances/{id}")).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    pub async fn wait_state(&self, id: &str, states: &[&str], timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let view = self.instance(id).await;
            if states.contains(&view["state"].as_str().unwrap_or_default()) {
                return view;
            }
            assert!(Instant::now() < deadline, "{id} never reached {states:?}: {view}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        self.http.get(format!("{}/metrics", self.base)).send().await.unwrap().text().await.unwrap()
    }
}
