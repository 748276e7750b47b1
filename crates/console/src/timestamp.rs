//! Instants as people and scripts read them: ISO 8601 in UTC for the API, and for the
//! pages a `<time datetime=ISO>` element that `console.js` turns into "3 min ago" with
//! the exact local time on hover (without the script, the UTC time stays readable).

use minijinja::Value;

/// `2026-11-30T05:13:37Z` for Unix seconds `unix` (proleptic Gregorian, UTC).
pub fn iso8601(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// An optional instant for JSON: `null` for 0 (never happened).
pub fn iso8601_or_null(unix: i64) -> serde_json::Value {
    if unix > 0 {
        serde_json::Value::String(iso8601(unix))
    } else {
        serde_json::Value::Null
    }
}

/// Year, month, day of the day `days` after 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The template filter `when`: Unix seconds to a `<time>` element. Its text is built
/// from the number alone (digits, dashes, colons), so it is safe to mark as HTML.
pub fn when(unix: i64) -> Value {
    if unix <= 0 {
        return Value::from("never");
    }
    let iso = iso8601(unix);
    let shown = iso.replacen('T', " ", 1).replacen('Z', " UTC", 1);
    Value::from_safe_string(format!(r#"<time datetime="{iso}">{shown}</time>"#))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_print_as_iso_8601_utc() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(iso8601(1_795_916_875), "2026-11-29T01:47:55Z");
        assert_eq!(iso8601(-1), "1969-12-31T23:59:59Z");
        assert_eq!(iso8601_or_null(0), serde_json::Value::Null);
    }

    #[test]
    fn the_filter_gives_a_time_element_that_reads_without_script() {
        assert_eq!(
            when(1_795_916_875).to_string(),
            r#"<time datetime="2026-11-29T01:47:55Z">2026-11-29 01:47:55 UTC</time>"#
        );
        assert_eq!(when(0).to_string(), "never");
    }
}
