// Alert rules on what an operator must act on. Log alerts query Application Insights (the
// function host's requests and the app's log lines: their texts are in shared_code/sending.py);
// the dead-letter alert reads the Service Bus metric per queue.
// An action group (e-mail) is created only when an address is given; without one the alerts
// still fire and show in the portal.

param location string = resourceGroup().location
param tags object = {}
param namePrefix string
param applicationInsightsName string
param serviceBusNamespaceName string
param queueNames array
param alertEmailAddress string = ''

@description('Share of webhook requests answered 5xx (percent, over 15 minutes) that alerts.')
param webhookServerErrorPercent int = 5
@description('Meta throttling answers (130429) in 15 minutes that alert.')
param throttledSendsThreshold int = 50
@description('Failed function invocations in 15 minutes that alert.')
param functionFailuresThreshold int = 10

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource serviceBus 'Microsoft.ServiceBus/namespaces@2022-10-01-preview' existing = {
  name: serviceBusNamespaceName
}

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = if (!empty(alertEmailAddress)) {
  name: '${namePrefix}-operators'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'wa-bridge'
    enabled: true
    emailReceivers: [
      {
        name: 'operator'
        emailAddress: alertEmailAddress
        useCommonAlertSchema: true
      }
    ]
  }
}

var actionGroupIds = empty(alertEmailAddress) ? [] : [
  actionGroup.id
]

// Meta retries a webhook answered 5xx for days, but a steady share of them means storage is
// failing (the intake answers 503 when PostgreSQL is down).
var webhookServerErrorsQuery = '''
requests
| where url has "/api/v1/whatsapp/webhook"
| summarize total = count(), failed = countif(toint(resultCode) >= 500)
| extend failedPercent = iff(total == 0, 0.0, 100.0 * failed / total)
'''

// The sender's retry line names Meta's code: "attempt N failed (ThrottledError, code 130429)".
var throttledSendsQuery = '''
traces
| where message has "code 130429"
'''

// Any failed invocation of any function (the host records each as a request).
var functionFailuresQuery = '''
requests
| where success == false
| summarize failures = count() by operation_Name
'''

// Code 190: the access token expired or was revoked. Every send fails until it is rotated.
var tokenErrorsQuery = '''
traces
| where message has "failed permanently (code 190)"
'''

resource webhookServerErrors 'Microsoft.Insights/scheduledQueryRules@2023-03-15-preview' = {
  name: '${namePrefix}-webhook-5xx-rate'
  location: location
  tags: tags
  properties: {
    displayName: 'WhatsApp webhook: 5xx answers'
    description: 'More than ${webhookServerErrorPercent}% of webhook requests were answered 5xx in 15 minutes.'
    severity: 1
    enabled: true
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    scopes: [
      applicationInsights.id
    ]
    criteria: {
      allOf: [
        {
          query: webhookServerErrorsQuery
          timeAggregation: 'Maximum'
          metricMeasureColumn: 'failedPercent'
          operator: 'GreaterThan'
          threshold: webhookServerErrorPercent
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: actionGroupIds
    }
  }
}

resource throttledSends 'Microsoft.Insights/scheduledQueryRules@2023-03-15-preview' = {
  name: '${namePrefix}-meta-throttled-130429'
  location: location
  tags: tags
  properties: {
    displayName: 'WhatsApp sends throttled by Meta (130429)'
    description: 'Meta answered 130429 (throughput limit) more than ${throttledSendsThreshold} times in 15 minutes: lower RATE_LIMITS.'
    severity: 2
    enabled: true
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    scopes: [
      applicationInsights.id
    ]
    criteria: {
      allOf: [
        {
          query: throttledSendsQuery
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: throttledSendsThreshold
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: actionGroupIds
    }
  }
}

resource functionFailures 'Microsoft.Insights/scheduledQueryRules@2023-03-15-preview' = {
  name: '${namePrefix}-function-failures'
  location: location
  tags: tags
  properties: {
    displayName: 'Function invocations failing'
    description: 'More than ${functionFailuresThreshold} failed invocations of one function in 15 minutes.'
    severity: 2
    enabled: true
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    scopes: [
      applicationInsights.id
    ]
    criteria: {
      allOf: [
        {
          query: functionFailuresQuery
          timeAggregation: 'Total'
          metricMeasureColumn: 'failures'
          dimensions: [
            {
              name: 'operation_Name'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          operator: 'GreaterThan'
          threshold: functionFailuresThreshold
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: actionGroupIds
    }
  }
}

resource tokenErrors 'Microsoft.Insights/scheduledQueryRules@2023-03-15-preview' = {
  name: '${namePrefix}-meta-token-190'
  location: location
  tags: tags
  properties: {
    displayName: 'WhatsApp access token rejected (190)'
    description: 'Meta refused the access token (code 190): rotate whatsapp-access-token in Key Vault.'
    severity: 1
    enabled: true
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    scopes: [
      applicationInsights.id
    ]
    criteria: {
      allOf: [
        {
          query: tokenErrorsQuery
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: actionGroupIds
    }
  }
}

// A dead-lettered message is one the app gave up on: look at it, fix, replay (README).
resource deadLetters 'Microsoft.Insights/metricAlerts@2018-03-01' = [for queueName in queueNames: {
  name: '${namePrefix}-dead-letters-${queueName}'
  location: 'global'
  tags: tags
  properties: {
    description: 'Messages in the dead-letter queue of ${queueName}.'
    severity: 2
    enabled: true
    scopes: [
      serviceBus.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          name: 'DeadLetteredMessages'
          criterionType: 'StaticThresholdCriterion'
          metricNamespace: 'Microsoft.ServiceBus/namespaces'
          metricName: 'DeadletteredMessages'
          dimensions: [
            {
              name: 'EntityName'
              operator: 'Include'
              values: [
                queueName
              ]
            }
          ]
          operator: 'GreaterThan'
          threshold: 0
          timeAggregation: 'Maximum'
        }
      ]
    }
    autoMitigate: true
    actions: empty(alertEmailAddress) ? [] : [
      {
        actionGroupId: actionGroup.id
      }
    ]
  }
}]
