// An app written against WeChat Cloud Hosting's documentation, run unchanged behind wxgate
// (tests/cloudhosting.rs). It reads the caller from Cloud Hosting's headers (no login code of
// its own) and calls WeChat's msg_sec_check the open-API-service way: http://api.weixin.qq.com
// with no access_token.
//
// Inside Cloud Hosting, api.weixin.qq.com reaches the open API sidecar by itself. Elsewhere the
// same URL goes through HTTP_PROXY, here wxgate's relay. Node's built-in http reads no HTTP_PROXY:
// this does what a proxy-aware client (axios, got with an agent, request) does with it: connect
// to the proxy and send the absolute URL as the request target, `Host: api.weixin.qq.com`.
import express from 'express';
import http from 'node:http';

function callWechat(path, body) {
  const url = new URL(path, 'http://api.weixin.qq.com');
  const proxy = process.env.HTTP_PROXY ? new URL(process.env.HTTP_PROXY) : null;
  const data = JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: proxy ? proxy.hostname : url.hostname,
        port: proxy ? Number(proxy.port) : 80,
        path: proxy ? url.href : url.pathname + url.search,
        method: 'POST',
        headers: {
          host: url.host,
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(data),
        },
      },
      (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => {
          try {
            resolve({
              status: res.statusCode,
              seqid: res.headers['x-openapi-seqid'] ?? null,
              body: JSON.parse(Buffer.concat(chunks).toString()),
            });
          } catch (e) {
            reject(e);
          }
        });
      },
    );
    req.on('error', reject);
    req.end(data);
  });
}

const app = express();
app.use(express.json());

// Cloud Hosting's advice: a request without X-WX-SOURCE did not come from WeChat.
app.post('/api/check', async (req, res) => {
  if (!req.headers['x-wx-source']) {
    res.status(403).json({ error: 'not from WeChat' });
    return;
  }
  const openid = req.headers['x-wx-openid'];
  try {
    const answer = await callWechat('/wxa/msg_sec_check', {
      openid,
      version: 2,
      scene: 2,
      content: req.body.content,
    });
    res.json({
      openid,
      appid: req.headers['x-wx-appid'] ?? null,
      unionid: req.headers['x-wx-unionid'] ?? null,
      source: req.headers['x-wx-source'],
      client_ip: req.headers['x-original-forwarded-for'] ?? null,
      wechat_status: answer.status,
      seqid: answer.seqid,
      errcode: answer.body.errcode,
      suggest: answer.body.result ? answer.body.result.suggest : null,
    });
  } catch (e) {
    res.status(500).json({ error: String(e) });
  }
});

const server = app.listen(Number(process.env.PORT || 0), '127.0.0.1', () => {
  console.log(`listening on http://127.0.0.1:${server.address().port}`);
});
