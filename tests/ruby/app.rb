# The Sidekiq 6.4 application of taskscope's tests (tests/sidekiq.rs, the fixture capture):
# `sidekiq -r ./tests/ruby/app.rb -q default -q critical -c 5` with REDIS_URL set.
# Each job's behaviour is in its arguments, so the producer (produce.rb) decides the scenario.
require "sidekiq"

# redis-rb 4.8 warns at every `SADD` Sidekiq 6.4 sends.
Redis.silence_deprecations = true if Redis.respond_to?(:silence_deprecations=)

# `TS_SIDEKIQ_NAMESPACE`: the app's keys under a redis-namespace (`<ns>:queues`...).
namespace = ENV["TS_SIDEKIQ_NAMESPACE"].to_s
unless namespace.empty?
  redis = {url: ENV.fetch("REDIS_URL", "redis://127.0.0.1:6379/0"), namespace: namespace}
  Sidekiq.configure_client { |config| config.redis = redis }
  Sidekiq.configure_server { |config| config.redis = redis }
end

Sidekiq.configure_server do |config|
  # The retry poller checks every `average_scheduled_poll_interval` seconds on average; tests
  # want a retry or a scheduled job back within a second or two.
  config.options[:average_scheduled_poll_interval] = 1
end

# Adds two numbers, after sleeping `seconds` (a slow job shows in the work hash).
class AddJob
  include Sidekiq::Worker

  def perform(a, b, seconds = 0)
    # The tests wait for this marker before they kill the process.
    dir = ENV["TS_MARKER_DIR"]
    File.write(File.join(dir, "#{jid}.started"), "") if dir
    sleep(seconds) if seconds.to_f > 0
    a + b
  end
end

# Always fails; `retry: 1` then `dead` (its retry delay is overridden to 1 s).
class FailJob
  include Sidekiq::Worker
  sidekiq_options retry: 1, backtrace: 5
  sidekiq_retry_in { |_count, _exception| 1 }

  def perform(message)
    raise ArgumentError, message
  end
end

# Fails without retries: `retry: 0` sends it straight to `dead` (`retry: false` would write
# nothing at all).
class NoRetryJob
  include Sidekiq::Worker
  sidekiq_options retry: 0

  def perform(message)
    raise ArgumentError, message
  end
end

# Fails on its first run and succeeds on the second (a marker key in Redis says which run).
class FlakyJob
  include Sidekiq::Worker
  sidekiq_options retry: 3
  sidekiq_retry_in { |_count, _exception| 1 }

  def perform(token)
    first = Sidekiq.redis { |c| c.set("taskscope-test:flaky:#{token}", "1", nx: true) }
    raise RuntimeError, "first run of #{token} fails" if first
    token
  end
end
