//! SASL responses in connection.start-ok: PLAIN (`authzid NUL user NUL password`) and AMQPLAIN (a field
//! table without its length prefix holding LOGIN and PASSWORD long strings).
//!
//! Input: `[mechanism][response...]`: an even first byte parses the response as PLAIN, an odd one as
//! AMQPLAIN.
//!
//! Checks, against direct readings of the two formats: PLAIN accepts exactly three NUL-separated parts
//! whose user and password are UTF-8, and the response is then rebuilt byte for byte from them; AMQPLAIN
//! accepts exactly a decodable table whose first LOGIN and first PASSWORD are UTF-8 long strings.

use protocol::FieldValue;

fn plain_reference(resp: &[u8]) -> Option<(String, String)> {
    let nuls: Vec<usize> = resp
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == 0)
        .map(|(i, _)| i)
        .collect();
    if nuls.len() != 2 {
        return None;
    }
    let user = std::str::from_utf8(&resp[nuls[0] + 1..nuls[1]]).ok()?;
    let pass = std::str::from_utf8(&resp[nuls[1] + 1..]).ok()?;
    Some((user.to_owned(), pass.to_owned()))
}

fn amqplain_reference(resp: &[u8]) -> Option<(String, String)> {
    let t = crate::table_from_body(resp).ok()?;
    let text = |k: &str| match t.iter().find(|(key, _)| key.as_str() == k).map(|(_, v)| v) {
        Some(FieldValue::LongStr(s)) => s.as_str().map(str::to_owned),
        _ => None,
    };
    Some((text("LOGIN")?, text("PASSWORD")?))
}

pub fn run(data: &[u8]) {
    let Some((&mech, resp)) = data.split_first() else {
        return;
    };
    if mech % 2 == 0 {
        let got = broker::auth::parse_plain(resp);
        assert_eq!(got, plain_reference(resp), "PLAIN {resp:?}");
        if let Some((user, pass)) = got {
            let authzid_len = resp.iter().position(|b| *b == 0).expect("a NUL");
            let mut rebuilt = resp[..authzid_len].to_vec();
            rebuilt.push(0);
            rebuilt.extend_from_slice(user.as_bytes());
            rebuilt.push(0);
            rebuilt.extend_from_slice(pass.as_bytes());
            assert_eq!(rebuilt, resp);
        }
    } else {
        assert_eq!(
            broker::auth::parse_amqplain(resp),
            amqplain_reference(resp),
            "AMQPLAIN {resp:?}"
        );
    }
}
